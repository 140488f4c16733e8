//! spec.volumes: emptyDir, hostPath, downwardAPI and projected (of
//! downwardAPI sources); every other source is named in an error.

use std::collections::HashSet;

use crate::diag::{push_index, push_key, Issues};
use crate::manifest::{DownwardApiFile, Scalar, Volume};
use crate::names;
use crate::plan::{FilePlan, HostPathType, VolumePlan, VolumeSource};
use crate::quantity::Quantity;

use super::container::{metadata_key_ref, resource_ref, EnvSpec};
use super::paths::absolute_clean;
use super::security::relative_clean;

/// A downward API file's content from its reference (`EnvSpec::Field` or
/// `EnvSpec::Resource`), as the pod resolves it.
pub type Content<'a> = &'a dyn Fn(&EnvSpec, &str, &mut Issues) -> Option<String>;

/// The kubelet's `defaultMode` of API data volumes.
const DEFAULT_MODE: u32 = 0o644;

/// Field paths a downward API volume may name (fewer than env: no status
/// or spec fields).
fn volume_field_ok(f: &str) -> bool {
    matches!(
        f,
        "metadata.name"
            | "metadata.namespace"
            | "metadata.uid"
            | "metadata.labels"
            | "metadata.annotations"
    ) || metadata_key_ref(f)
}

/// A file mode: a number, or written in octal as YAML 1.1 (the API
/// server's YAML) reads `0644`, or `0o644`.
fn mode(path: &str, m: Option<&Scalar>, default: u32, issues: &mut Issues) -> u32 {
    let Some(Scalar(text)) = m else {
        return default;
    };
    let parsed = match text.strip_prefix("0o").or_else(|| text.strip_prefix('0')) {
        Some("") => Ok(0),
        Some(oct) => u32::from_str_radix(oct, 8),
        None => text.parse::<u32>(),
    };
    match parsed {
        Ok(m) if m <= 0o777 => m,
        _ => {
            issues.error(
                path,
                format!("{text:?} must be a file mode between 0 and 0777 (511)"),
            );
            default
        }
    }
}

/// The files of downward API `items` into `out`.
fn downward_files(
    path: &str,
    items: &[DownwardApiFile],
    default_mode: u32,
    content: Content<'_>,
    out: &mut Vec<FilePlan>,
    issues: &mut Issues,
) {
    for (i, item) in items.iter().enumerate() {
        let ip = push_index(path, i);
        let k = |key: &str| push_key(&ip, key);
        let fpath = item.path.clone().unwrap_or_default();
        if let Err(e) = relative_clean(&fpath) {
            issues.error(k("path"), format!("{fpath:?} {e}"));
            continue;
        }
        if fpath.starts_with("..") {
            issues.error(k("path"), format!("{fpath:?} must not start with \"..\""));
            continue;
        }
        let spec = match (&item.field_ref, &item.resource_field_ref) {
            (Some(fr), None) => match fr.field_path.as_deref() {
                Some(f) if volume_field_ok(f) => EnvSpec::Field(f.to_string()),
                Some(f) => {
                    issues.error(
                        push_key(&k("fieldRef"), "fieldPath"),
                        format!("{f:?} is not a field a downwardAPI volume may show (metadata.name, metadata.namespace, metadata.uid, metadata.labels, metadata.annotations, metadata.labels['k'], metadata.annotations['k'])"),
                    );
                    continue;
                }
                None => {
                    issues.error(push_key(&k("fieldRef"), "fieldPath"), "required");
                    continue;
                }
            },
            (None, Some(rf)) => {
                if rf.container_name.as_deref().is_none_or(str::is_empty) {
                    issues.error(
                        push_key(&k("resourceFieldRef"), "containerName"),
                        "required in a volume",
                    );
                    continue;
                }
                match resource_ref(&k("resourceFieldRef"), rf, issues) {
                    Some(s) => s,
                    None => continue,
                }
            }
            _ => {
                issues.error(
                    ip.clone(),
                    "exactly one of fieldRef, resourceFieldRef is required",
                );
                continue;
            }
        };
        let Some(text) = content(&spec, &ip, issues) else {
            continue;
        };
        if out.iter().any(|f| {
            f.path == fpath
                || f.path.starts_with(&format!("{fpath}/"))
                || fpath.starts_with(&format!("{}/", f.path))
        }) {
            issues.error(
                k("path"),
                format!("{fpath:?} is given twice (or is a file and a directory)"),
            );
            continue;
        }
        out.push(FilePlan {
            path: fpath,
            content: text,
            mode: mode(&k("mode"), item.mode.as_ref(), default_mode, issues),
        });
    }
}

/// A `downwardAPI` or `projected` volume's files; none after an error.
fn files_volume(
    p: &str,
    v: &Volume,
    content: Content<'_>,
    issues: &mut Issues,
) -> Option<VolumeSource> {
    let k = |key: &str| push_key(p, key);
    let before = issues.error_count();
    let mut files = Vec::new();
    if let Some(d) = &v.downward_api {
        let dp = k("downwardAPI");
        let dm = mode(
            &push_key(&dp, "defaultMode"),
            d.default_mode.as_ref(),
            DEFAULT_MODE,
            issues,
        );
        downward_files(
            &push_key(&dp, "items"),
            &d.items,
            dm,
            content,
            &mut files,
            issues,
        );
    }
    if let Some(pr) = &v.projected {
        let pp = k("projected");
        let dm = mode(
            &push_key(&pp, "defaultMode"),
            pr.default_mode.as_ref(),
            DEFAULT_MODE,
            issues,
        );
        for (i, src) in pr.sources.iter().enumerate() {
            let sp = push_index(&push_key(&pp, "sources"), i);
            let others = [
                ("configMap", src.config_map.is_some()),
                ("secret", src.secret.is_some()),
                ("serviceAccountToken", src.service_account_token.is_some()),
                ("clusterTrustBundle", src.cluster_trust_bundle.is_some()),
                ("podCertificate", src.pod_certificate.is_some()),
            ];
            let set =
                others.iter().filter(|(_, s)| *s).count() + usize::from(src.downward_api.is_some());
            if set != 1 {
                issues.error(sp, "a projection has exactly one source");
                continue;
            }
            if let Some((field, _)) = others.iter().find(|(_, s)| *s) {
                issues.error(
                    push_key(&sp, field),
                    format!("{field} projections need an API server's objects: not supported by podagent (supported: downwardAPI)"),
                );
                continue;
            }
            if let Some(d) = &src.downward_api {
                let ip = push_key(&push_key(&sp, "downwardAPI"), "items");
                downward_files(&ip, &d.items, dm, content, &mut files, issues);
            }
        }
    }
    (issues.error_count() == before).then_some(VolumeSource::Files { files })
}

pub fn volumes(
    path: &str,
    list: &[Volume],
    content: Content<'_>,
    issues: &mut Issues,
) -> Vec<VolumePlan> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (i, v) in list.iter().enumerate() {
        let p = push_index(path, i);
        let k = |key: &str| push_key(&p, key);
        let name = v.name.clone().unwrap_or_default();
        if let Err(e) = names::dns1123_label(&name) {
            issues.error(k("name"), format!("{name:?} {e}"));
            continue;
        }
        if !seen.insert(name.clone()) {
            issues.error(k("name"), format!("volume {name:?} is defined twice"));
            continue;
        }
        let unsupported = [
            ("persistentVolumeClaim", v.persistent_volume_claim.is_some()),
            ("configMap", v.config_map.is_some()),
            ("secret", v.secret.is_some()),
            ("nfs", v.nfs.is_some()),
            ("csi", v.csi.is_some()),
            ("ephemeral", v.ephemeral.is_some()),
            ("image", v.image.is_some()),
            ("iscsi", v.iscsi.is_some()),
            ("gitRepo", v.git_repo.is_some()),
        ];
        let sources = unsupported.iter().filter(|(_, s)| *s).count()
            + usize::from(v.empty_dir.is_some())
            + usize::from(v.host_path.is_some())
            + usize::from(v.downward_api.is_some())
            + usize::from(v.projected.is_some());
        if sources > 1 {
            issues.error(p.clone(), "a volume has exactly one source");
            continue;
        }
        if let Some((field, _)) = unsupported.iter().find(|(_, s)| *s) {
            issues.error(
                k(field),
                format!(
                    "{field} volumes are not supported by podagent (supported: emptyDir, hostPath, downwardAPI, projected)"
                ),
            );
            continue;
        }
        let source = if v.downward_api.is_some() || v.projected.is_some() {
            match files_volume(&p, v, content, issues) {
                Some(s) => s,
                None => continue,
            }
        } else if let Some(h) = &v.host_path {
            let hp = k("hostPath");
            let hpath = h.path.clone().unwrap_or_default();
            if let Err(e) = absolute_clean(&hpath) {
                issues.error(push_key(&hp, "path"), format!("{hpath:?} {e}"));
                continue;
            }
            let kind = match h.kind.as_deref() {
                None | Some("") => HostPathType::Unset,
                Some("DirectoryOrCreate") => HostPathType::DirectoryOrCreate,
                Some("Directory") => HostPathType::Directory,
                Some("FileOrCreate") => HostPathType::FileOrCreate,
                Some("File") => HostPathType::File,
                Some("Socket") => HostPathType::Socket,
                Some("CharDevice") => HostPathType::CharDevice,
                Some("BlockDevice") => HostPathType::BlockDevice,
                Some(t) => {
                    issues.error(
                        push_key(&hp, "type"),
                        format!("{t:?} is not one of \"\", DirectoryOrCreate, Directory, FileOrCreate, File, Socket, CharDevice, BlockDevice"),
                    );
                    continue;
                }
            };
            VolumeSource::HostPath { path: hpath, kind }
        } else {
            // Kubernetes defaults a volume without a source to an emptyDir.
            let e = v.empty_dir.clone().unwrap_or_default();
            let ep = k("emptyDir");
            let memory = match e.medium.as_deref() {
                None | Some("") => false,
                Some("Memory") => true,
                Some(m) => {
                    issues.error(
                        push_key(&ep, "medium"),
                        format!("{m:?} is not supported (\"\" or \"Memory\")"),
                    );
                    continue;
                }
            };
            let size_limit_bytes = match &e.size_limit {
                None => None,
                Some(s) => match Quantity::parse(&s.0).and_then(|q| q.value_ceil()) {
                    Ok(b) => Some(b),
                    Err(err) => {
                        issues.error(push_key(&ep, "sizeLimit"), err.to_string());
                        continue;
                    }
                },
            };
            VolumeSource::EmptyDir {
                memory,
                size_limit_bytes,
            }
        };
        out.push(VolumePlan { name, source });
    }
    out
}
