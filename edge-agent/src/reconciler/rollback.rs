//! Rollback: what a release that did not come up leads to. The choice (back to the last
//! good release once, or give up) is the planner's [`plan::after_failure`]; this records
//! it in the journal, says it in the logs and the status, and the next pass plans the
//! rollback itself from the journal ([`super::journal::Journal::effective`]).

use protocol::release::TargetState;

use super::journal::Failure;
use super::plan::{self, AfterFailure};
use super::{Inner, Outcome, UpdateStatus};

impl Inner {
    /// `target` did not come up because of `reason` (`rolling_back`: it was itself the
    /// rollback): roll back once, or give up.
    pub(super) async fn release_failed(
        &self,
        target: &TargetState,
        rolling_back: bool,
        reason: String,
    ) -> Outcome {
        let j = self.journal.lock().await.clone();
        let choice = plan::after_failure(&j, target, rolling_back);
        if choice == AfterFailure::RollbackFailed {
            let msg = format!(
                "rollback to {} failed too: {reason}{}",
                target.release,
                j.failed
                    .map(|f| format!(" (release {} failed: {})", f.release, f.reason))
                    .unwrap_or_default()
            );
            self.logs.warning(msg.clone());
            // The old release is not good any more: nothing to go back to, no loop.
            self.save_journal(|j| {
                j.last_good = None;
                j.in_flight = None;
            })
            .await;
            self.publish(|s| {
                s.update_status = UpdateStatus::Failed;
                s.error = Some(msg);
                s.last_good_release = None;
            });
            return Outcome::Failed;
        }
        self.save_journal(|j| {
            j.failed = Some(Failure {
                release: target.release.clone(),
                reason: reason.clone(),
            });
            j.in_flight = None;
        })
        .await;
        match choice {
            AfterFailure::RollBack(good) => {
                let msg = format!("{reason}; rolling back to {}", good.release);
                self.logs.system(format!(
                    "Rolling back to release {} because {reason}",
                    good.release
                ));
                self.publish(|s| {
                    s.update_status = UpdateStatus::RollingBack;
                    s.error = Some(msg);
                });
                Outcome::Again
            }
            AfterFailure::GiveUp | AfterFailure::RollbackFailed => {
                self.logs.warning(format!(
                    "Release {} failed: {reason}; no earlier good release to roll back to",
                    target.release
                ));
                self.publish(|s| {
                    s.update_status = UpdateStatus::Failed;
                    s.error = Some(reason);
                });
                Outcome::Failed
            }
        }
    }
}
