//! Image garbage collection from the loop: at each resync, when no
//! collection runs, the set of images in use is refreshed (every image of a
//! pod desired) and a collection started on a thread of its own
//! (`crate::image::gc`); its report comes back as events on a later pass.
//! A start adds its image to the set before it is handed to the pool, so a
//! collection never takes an image a start is about to use.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::SystemTime;

use crate::events::Kind;
use crate::image::gc::{Policy, Report};
use crate::image::ImageError;

use super::Agent;

/// The collector's state in the agent.
#[derive(Debug)]
pub struct ImageGc {
    pub policy: Policy,
    /// Normalised references of the images the node's pods use.
    pub in_use: Arc<Mutex<BTreeSet<String>>>,
    /// When a container last started with each image.
    pub last_used: BTreeMap<String, SystemTime>,
    running: Option<JoinHandle<Result<Option<Report>, ImageError>>>,
}

impl ImageGc {
    pub fn new(policy: Policy) -> ImageGc {
        ImageGc {
            policy,
            in_use: Arc::default(),
            last_used: BTreeMap::new(),
            running: None,
        }
    }

    /// `image` is about to be used by a start.
    pub fn using(&mut self, image: &str) {
        let key = crate::image::normalise_reference(image).unwrap_or_else(|_| image.to_string());
        self.last_used.insert(key.clone(), SystemTime::now());
        self.in_use
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key);
    }
}

impl Agent {
    /// Reports a finished collection; starts one when none runs.
    pub(super) fn collect_images(&mut self) {
        if !self.image_gc.policy.enabled() {
            return;
        }
        if self
            .image_gc
            .running
            .as_ref()
            .is_some_and(|h| h.is_finished())
        {
            if let Some(h) = self.image_gc.running.take() {
                let result = h.join().unwrap_or_else(|_| Ok(None));
                self.report_collection(result);
            }
        }
        if self.image_gc.running.is_some() {
            return;
        }
        let desired = self.sources.desired();
        let images: BTreeSet<String> = desired
            .pods
            .values()
            .flat_map(|(_, p)| p.all_containers().map(|c| c.image.clone()))
            .map(|i| crate::image::normalise_reference(&i).unwrap_or(i))
            .collect();
        *self
            .image_gc
            .in_use
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = images;
        let store = self.rt.images.clone();
        let policy = self.image_gc.policy;
        let in_use = self.image_gc.in_use.clone();
        let last_used = self.image_gc.last_used.clone();
        let spawned = std::thread::Builder::new()
            .name("image-gc".into())
            .spawn(move || {
                // Overlays still mounted (a container being stopped, or one
                // whose pod changed) keep their images too. Read once: an
                // overlay mounted after this is a start's, whose image the
                // in-use set already holds.
                let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
                let mounted = |layers: &[std::path::PathBuf]| {
                    !crate::image::gc::overlays_using(&mi, layers).is_empty()
                };
                crate::image::gc::collect(
                    &store,
                    &policy,
                    &in_use,
                    &last_used,
                    &mounted,
                    SystemTime::now(),
                )
            });
        match spawned {
            Ok(h) => self.image_gc.running = Some(h),
            Err(e) => self.event(
                Kind::Warning,
                "ImageGCFailed",
                "images",
                None,
                format!("starting the image collector: {e}"),
            ),
        }
    }

    fn report_collection(&mut self, result: Result<Option<Report>, ImageError>) {
        let p = self.image_gc.policy;
        match result {
            Ok(None) => {}
            Ok(Some(r)) => {
                if !r.removed.is_empty() {
                    self.event(
                        Kind::Normal,
                        "ImageGC",
                        "images",
                        None,
                        format!(
                            "disk {}% used (high threshold {}%): removed {}; {} bytes freed, now {}% used",
                            r.used_before,
                            p.high,
                            r.removed.join(", "),
                            r.freed,
                            r.used_after
                        ),
                    );
                }
                if r.short {
                    self.event(
                        Kind::Warning,
                        "FreeDiskSpaceFailed",
                        "images",
                        None,
                        format!(
                            "disk {}% used, above the low threshold {}%, and no other image may be removed (in use, or younger than {} s)",
                            r.used_after,
                            p.low,
                            p.min_age.as_secs()
                        ),
                    );
                }
            }
            Err(e) => self.event(
                Kind::Warning,
                "ImageGCFailed",
                "images",
                None,
                crate::error_chain(&e),
            ),
        }
    }
}
