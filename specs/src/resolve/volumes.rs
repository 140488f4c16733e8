//! spec.volumes: emptyDir and hostPath; every other source is named in an error.

use std::collections::HashSet;

use crate::diag::{push_index, push_key, Issues};
use crate::manifest::Volume;
use crate::names;
use crate::plan::{HostPathType, VolumePlan, VolumeSource};
use crate::quantity::Quantity;

use super::paths::absolute_clean;

pub fn volumes(path: &str, list: &[Volume], issues: &mut Issues) -> Vec<VolumePlan> {
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
            ("projected", v.projected.is_some()),
            ("downwardAPI", v.downward_api.is_some()),
            ("nfs", v.nfs.is_some()),
            ("csi", v.csi.is_some()),
            ("ephemeral", v.ephemeral.is_some()),
            ("image", v.image.is_some()),
            ("iscsi", v.iscsi.is_some()),
            ("gitRepo", v.git_repo.is_some()),
        ];
        let sources = unsupported.iter().filter(|(_, s)| *s).count()
            + usize::from(v.empty_dir.is_some())
            + usize::from(v.host_path.is_some());
        if sources > 1 {
            issues.error(p.clone(), "a volume has exactly one source");
            continue;
        }
        if let Some((field, _)) = unsupported.iter().find(|(_, s)| *s) {
            issues.error(
                k(field),
                format!(
                    "{field} volumes are not supported by podagent (supported: emptyDir, hostPath)"
                ),
            );
            continue;
        }
        let source = if let Some(h) = &v.host_path {
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
