//! Moderation of blog comments, as the course's moderation service: on every
//! `CommentCreated` it decides `approved` or `rejected` and emits `CommentModerated`.
//! The rule is a list of blocked words (`--blocked-words`, default `orange`): a comment
//! whose content contains one anywhere, in any letter case, is rejected.
//!
//! The decision and its event are written in one transaction together with the
//! message's inbox record, so a redelivered `CommentCreated` is not moderated twice.
//! `POST /events` accepts the course's pushed events through the same path.

pub mod events;

use std::sync::Arc;

use contracts::blog::{BlogEvent, CommentCreated, CommentModerated, CommentStatus};
use platform::{ServiceApp, ServiceContext};

/// Settings of the service: flags, each with a `FLOTILLA_*` variable.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "moderation-args")]
pub struct Args {
    /// Words that get a comment rejected, comma-separated; matched anywhere in the
    /// content, ignoring letter case.
    #[arg(
        long,
        env = "FLOTILLA_BLOCKED_WORDS",
        default_value = "orange",
        value_delimiter = ','
    )]
    pub blocked_words: Vec<String>,
}

platform::default_from_flags!(Args);

pub const NAME: &str = "moderation";

/// The moderation rule.
#[derive(Debug, Clone)]
pub struct Moderator {
    /// Lower-cased, blanks removed.
    blocked: Vec<String>,
}

impl Moderator {
    pub fn new<S: AsRef<str>>(blocked_words: &[S]) -> Self {
        Self {
            blocked: blocked_words
                .iter()
                .map(|word| word.as_ref().trim().to_lowercase())
                .filter(|word| !word.is_empty())
                .collect(),
        }
    }

    pub fn decide(&self, content: &str) -> CommentStatus {
        let content = content.to_lowercase();
        if self
            .blocked
            .iter()
            .any(|word| content.contains(word.as_str()))
        {
            CommentStatus::Rejected
        } else {
            CommentStatus::Approved
        }
    }

    /// The `CommentModerated` answering `comment`.
    pub fn moderate(&self, comment: &CommentCreated) -> BlogEvent {
        BlogEvent::CommentModerated(CommentModerated {
            id: comment.id.clone(),
            post_id: comment.post_id.clone(),
            status: self.decide(&comment.content),
            content: comment.content.clone(),
        })
    }
}

/// Builds the service; `flotilla up`, `flotilla serve moderation` and tests all call this.
pub async fn build(context: &ServiceContext, args: &Args) -> anyhow::Result<ServiceApp> {
    let db = backbone::database(context, NAME).await?;
    let moderator = Moderator::new(&args.blocked_words);
    tracing::info!(blocked_words = ?moderator.blocked, "moderation rule");
    let (bus, publisher) = backbone::outbox(context, NAME, &db).await?;
    let store = bus::Store::database(&db).await?.with_outbox(publisher);
    let runner = Arc::new(bus::Runner::new(store, events::Moderation { moderator }));
    let consumer = runner
        .clone()
        .serve(bus, &context.tasks, context.shutdown.clone());
    let readiness = backbone::readiness(&db).with_check("consumers", consumer.check_fn());
    let target: Arc<dyn bus::PushTarget> = runner;
    let (routes, _) = backbone::push_route().with_state(target).split_for_parts();
    Ok(ServiceApp::new(NAME, routes).with_readiness(readiness))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_words_reject_in_any_case_anywhere() {
        let moderator = Moderator::default_rule();
        assert_eq!(moderator.decide("I like apples"), CommentStatus::Approved);
        assert_eq!(moderator.decide("Orange"), CommentStatus::Rejected);
        assert_eq!(moderator.decide("an ORANGE cat"), CommentStatus::Rejected);
        assert_eq!(moderator.decide("blood-oranges!"), CommentStatus::Rejected);
    }

    #[test]
    fn the_list_is_configurable() {
        let moderator = Moderator::new(&[" Spam ", "", "Ärger"]);
        assert_eq!(moderator.decide("orange"), CommentStatus::Approved);
        assert_eq!(moderator.decide("buy SPAM now"), CommentStatus::Rejected);
        assert_eq!(moderator.decide("viel ärger"), CommentStatus::Rejected);
        let nothing = Moderator::new::<&str>(&[]);
        assert_eq!(nothing.decide("orange"), CommentStatus::Approved);
    }

    impl Moderator {
        fn default_rule() -> Self {
            Moderator::new(&Args::default().blocked_words)
        }
    }
}
