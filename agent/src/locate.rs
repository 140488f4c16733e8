//! Finding a pod's and a container's directories in the agent's state dir by
//! name, with "did you mean" for a near miss.

use std::path::{Path, PathBuf};

/// What was not found, with what was (its message is the whole answer a
/// user gets, so the I/O error is part of it, not a source).
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    #[error("{}: {error} (is the agent's state dir right?)", path.display())]
    StateDir {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: pod.json has no uid", path.display())]
    NoUid { path: PathBuf },
    #[error("pod {namespace}/{name} not found{}", did_you_mean(close))]
    NoSuchPod {
        namespace: String,
        name: String,
        /// Near names.
        close: Vec<String>,
    },
    #[error("container {container} is not in pod {pod}; it has {}", has.join(", "))]
    NoSuchContainer {
        pod: String,
        container: String,
        has: Vec<String>,
    },
    #[error("pod {pod} has several containers: choose one with -c ({})", has.join(", "))]
    Several { pod: String, has: Vec<String> },
    #[error("pod {pod} has no containers yet ({error})")]
    NoContainers { pod: String, error: std::io::Error },
}

fn did_you_mean(close: &[String]) -> String {
    if close.is_empty() {
        String::new()
    } else {
        format!("; did you mean {}?", close.join(", "))
    }
}

/// Finds the pod's directory by namespace and name.
fn pod_uid(state: &Path, namespace: &str, name: &str) -> Result<String, LocateError> {
    let pods = state.join("pods");
    let mut names = Vec::new();
    for e in std::fs::read_dir(&pods)
        .map_err(|error| LocateError::StateDir {
            path: pods.clone(),
            error,
        })?
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
                .ok_or_else(|| LocateError::NoUid {
                    path: e.path().join("pod.json"),
                });
        }
        if let Some(n) = meta["name"].as_str() {
            names.push(n.to_string());
        }
    }
    Err(not_found(namespace, name, names.iter().map(String::as_str)))
}

/// "pod NS/NAME not found", with the near names among `names`.
fn not_found<'a>(namespace: &str, name: &str, names: impl Iterator<Item = &'a str>) -> LocateError {
    let mut close: Vec<String> = names
        .filter(|n| edit_distance(n, name) <= 2 || n.contains(name))
        .map(str::to_string)
        .collect();
    close.sort_unstable();
    close.dedup();
    LocateError::NoSuchPod {
        namespace: namespace.to_string(),
        name: name.to_string(),
        close,
    }
}

/// The pod `namespace/name` in the agent's `/v1/status` document.
pub fn find_pod<'a>(
    status: &'a serde_json::Value,
    namespace: &str,
    name: &str,
) -> Result<&'a serde_json::Value, LocateError> {
    let pods = status["pods"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    pods.iter()
        .find(|p| p["name"] == name && p["namespace"] == namespace)
        .ok_or_else(|| {
            not_found(
                namespace,
                name,
                pods.iter().filter_map(|p| p["name"].as_str()),
            )
        })
}

/// The container `container` names, or the pod's only one.
fn pick<'a>(
    pod: &str,
    container: Option<&str>,
    names: &'a [String],
) -> Result<&'a str, LocateError> {
    match (container, names) {
        (Some(c), _) => names
            .iter()
            .find(|n| *n == c)
            .map(String::as_str)
            .ok_or_else(|| LocateError::NoSuchContainer {
                pod: pod.to_string(),
                container: c.to_string(),
                has: names.to_vec(),
            }),
        (None, [only]) => Ok(only),
        (None, _) => Err(LocateError::Several {
            pod: pod.to_string(),
            has: names.to_vec(),
        }),
    }
}

/// The container of a pod from `/v1/status` that `container` names, or its
/// only one.
pub fn pick_container(
    pod: &serde_json::Value,
    container: Option<&str>,
) -> Result<String, LocateError> {
    let names: Vec<String> = pod["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect();
    pick(pod["name"].as_str().unwrap_or(""), container, &names).map(str::to_string)
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
) -> Result<PathBuf, LocateError> {
    let uid = pod_uid(state_dir, namespace, pod)?;
    let dir = state_dir.join("containers").join(&uid);
    let mut containers: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|error| LocateError::NoContainers {
            pod: pod.to_string(),
            error,
        })?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    containers.sort();
    let name = pick(pod, container, &containers)?;
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
