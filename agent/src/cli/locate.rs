//! Finding a pod's and a container's directories in the agent's state dir by
//! name, with "did you mean" for a near miss.

use std::path::{Path, PathBuf};

/// Finds the pod's directory by namespace and name.
fn pod_uid(state: &Path, namespace: &str, name: &str) -> Result<String, String> {
    let pods = state.join("pods");
    let mut names = Vec::new();
    for e in std::fs::read_dir(&pods)
        .map_err(|e| format!("{}: {e} (is the agent's state dir right?)", pods.display()))?
        .flatten()
    {
        let Ok(bytes) = std::fs::read(e.path().join("pod.json")) else {
            continue;
        };
        let Ok(meta) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            continue;
        };
        if meta["name"] == name && meta["namespace"] == namespace {
            return meta["uid"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| "pod.json has no uid".to_string());
        }
        if let Some(n) = meta["name"].as_str() {
            names.push(n.to_string());
        }
    }
    names.sort();
    let close: Vec<&String> = names
        .iter()
        .filter(|n| edit_distance(n, name) <= 2 || n.contains(name))
        .collect();
    Err(if close.is_empty() {
        format!("pod {namespace}/{name} not found")
    } else {
        format!(
            "pod {namespace}/{name} not found; did you mean {}?",
            close
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// Levenshtein distance, for "did you mean".
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

pub fn container_dir(
    state_dir: &Path,
    namespace: &str,
    pod: &str,
    container: Option<&str>,
) -> Result<PathBuf, String> {
    let uid = pod_uid(state_dir, namespace, pod)?;
    let dir = state_dir.join("containers").join(&uid);
    let mut containers: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| format!("pod {} has no containers yet ({e})", pod))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    containers.sort();
    let name = match (&container.map(str::to_string), containers.as_slice()) {
        (Some(c), _) if containers.contains(c) => c.clone(),
        (Some(c), _) => {
            return Err(format!(
                "container {c} is not in pod {}; it has {}",
                pod,
                containers.join(", ")
            ))
        }
        (None, [only]) => only.clone(),
        (None, _) => {
            return Err(format!(
                "pod {} has several containers: choose one with -c ({})",
                pod,
                containers.join(", ")
            ))
        }
    };
    Ok(dir.join(name))
}

#[cfg(test)]
mod tests {
    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(super::edit_distance("chatty", "chaty"), 1);
        assert_eq!(super::edit_distance("web", "web"), 0);
        assert_eq!(super::edit_distance("abc", "xyz"), 3);
    }
}
