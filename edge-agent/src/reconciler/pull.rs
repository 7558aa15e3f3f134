//! Image downloads: the missing images of a step, at most `max_parallel_pulls` at once,
//! each retried with doubling backoff, with progress per image, per service and overall.

use std::collections::BTreeSet;

use futures_util::StreamExt;
use protocol::release::TargetState;

use super::engine;
use super::{ImageStatus, Inner, Outcome, ReconcilerError, UpdateStatus};

impl Inner {
    /// A pull gave up: report it and try the pass again after `pull_backoff_max`.
    pub(super) fn pull_failed(&self, reason: ReconcilerError) -> Outcome {
        let retry = self.cfg.pull_backoff_max;
        let msg = format!("{reason}; retrying in {}s", retry.as_secs());
        self.logs.warning(msg.clone());
        self.publish(|s| {
            s.update_status = UpdateStatus::Failed;
            s.error = Some(msg);
        });
        Outcome::RetryIn(retry)
    }

    /// Pulls the missing ones among `images`, at most `max_parallel_pulls` at once.
    /// Reports `Downloading` meanwhile, then `after`.
    pub(super) async fn pull_all(
        &self,
        target: &TargetState,
        images: BTreeSet<String>,
        after: UpdateStatus,
    ) -> Result<(), ReconcilerError> {
        let mut missing = Vec::new();
        for image in images {
            match engine::has_image(&self.docker, &image).await {
                Ok(true) => {}
                Ok(false) => missing.push(image),
                Err(source) => return Err(ReconcilerError::InspectImage { image, source }),
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        {
            let mut p = self.progress.lock().expect("progress lock");
            p.clear();
            for image in &missing {
                p.insert(
                    image.clone(),
                    ImageStatus {
                        image: image.clone(),
                        status: "Downloading".into(),
                        download_progress: 0,
                    },
                );
            }
        }
        self.publish(|s| s.update_status = UpdateStatus::Downloading);
        self.publish_progress(target);
        let results: Vec<Result<(), ReconcilerError>> = futures_util::stream::iter(missing)
            .map(|image| self.pull_one(target, image))
            .buffer_unordered(self.cfg.max_parallel_pulls.max(1))
            .collect()
            .await;
        self.publish(|s| s.update_status = after);
        results.into_iter().collect()
    }

    /// Pulls one image, retrying with backoff; the retries show in the status error.
    async fn pull_one(&self, target: &TargetState, image: String) -> Result<(), ReconcilerError> {
        let mut backoff = self.cfg.pull_backoff;
        let attempts = self.cfg.pull_retries.max(1);
        self.logs.system(format!("Downloading image {image}"));
        for attempt in 1..=attempts {
            let res = engine::pull(&self.docker, &image, |pct| {
                if let Some(st) = self.progress.lock().expect("progress lock").get_mut(&image) {
                    st.download_progress = pct;
                }
                self.publish_progress(target);
            })
            .await;
            match res {
                Ok(()) => {
                    if let Some(st) = self.progress.lock().expect("progress lock").get_mut(&image) {
                        st.download_progress = 100;
                        st.status = "Downloaded".into();
                    }
                    self.publish_progress(target);
                    self.logs.system(format!("Downloaded image {image}"));
                    return Ok(());
                }
                Err(e) if attempt < attempts => {
                    let msg = format!(
                        "downloading {image} failed (attempt {attempt}/{attempts}): {e}; retrying in {}ms",
                        backoff.as_millis()
                    );
                    self.logs
                        .warning(format!("Failed to download image {image}: {e}"));
                    self.publish(|s| s.error = Some(msg));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.cfg.pull_backoff_max);
                }
                Err(source) => {
                    return Err(ReconcilerError::Pull {
                        image,
                        attempts,
                        source,
                    })
                }
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Publishes per-image and overall progress, and shows it against the services.
    fn publish_progress(&self, target: &TargetState) {
        let images: Vec<ImageStatus> = self
            .progress
            .lock()
            .expect("progress lock")
            .values()
            .cloned()
            .collect();
        let overall = if images.is_empty() {
            None
        } else {
            Some(
                (images
                    .iter()
                    .map(|i| u32::from(i.download_progress))
                    .sum::<u32>()
                    / images.len() as u32) as u8,
            )
        };
        self.publish(|s| {
            for svc in &mut s.services {
                if let (Some(spec), Some(img)) = (
                    target.services.get(&svc.name),
                    images.iter().find(|i| {
                        target
                            .services
                            .get(&svc.name)
                            .is_some_and(|sp| sp.image == i.image)
                    }),
                ) {
                    if svc.image != spec.image || svc.container_id.is_none() {
                        svc.status = img.status.clone();
                        svc.download_progress = Some(img.download_progress);
                    }
                }
            }
            s.images = images;
            s.overall_progress = overall;
        });
    }
}
