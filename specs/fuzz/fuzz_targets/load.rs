//! The loader on arbitrary bytes: it must never panic, and every OCI spec of a
//! pod it accepts must build.
#![no_main]

use libfuzzer_sys::fuzz_target;
use specs::oci::{container_spec, ImageConfig, OciInputs};

fuzz_target!(|data: &[u8]| {
    let report = specs::load("fuzz.yaml", data, &specs::NodeInfo::default());
    for pod in &report.pods {
        let inputs = OciInputs {
            image: ImageConfig { cmd: vec!["sh".into()], ..ImageConfig::default() },
            volume_dirs: pod.volumes.iter().map(|v| (v.name.clone(), "/v".into())).collect(),
            ..OciInputs::default()
        };
        for c in pod.all_containers() {
            if let Err(e) = container_spec(pod, c, &inputs) {
                // Only a Localhost profile the fuzzer cannot provide may fail.
                assert!(matches!(e, specs::oci::OciError::MissingSeccompProfile { .. }), "{e}");
            }
        }
    }
});
