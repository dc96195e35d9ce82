//! The Modality Performed Procedure Step state machine (PS3.4 F.7.2): a step is created
//! IN PROGRESS and may be set while it is; COMPLETED and DISCONTINUED are final. Its order
//! follows: in progress on creation, completed or discontinued with the step.

use crate::model::OrderStatus;

/// Performed Procedure Step Status (0040,0252).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PpsStatus {
    InProgress,
    Completed,
    Discontinued,
}

impl PpsStatus {
    pub fn parse(s: &str) -> Option<PpsStatus> {
        match s.trim() {
            "IN PROGRESS" => Some(PpsStatus::InProgress),
            "COMPLETED" => Some(PpsStatus::Completed),
            "DISCONTINUED" => Some(PpsStatus::Discontinued),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PpsStatus::InProgress => "IN PROGRESS",
            PpsStatus::Completed => "COMPLETED",
            PpsStatus::Discontinued => "DISCONTINUED",
        }
    }

    /// The status the step's order takes.
    pub fn order_status(self) -> OrderStatus {
        match self {
            PpsStatus::InProgress => OrderStatus::InProgress,
            PpsStatus::Completed => OrderStatus::Completed,
            PpsStatus::Discontinued => OrderStatus::Discontinued,
        }
    }
}

/// Why an N-CREATE or N-SET is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// 0x0106: a status that is not one of the three, or an N-CREATE not IN PROGRESS.
    #[error("Performed Procedure Step Status {0:?} is not allowed here")]
    InvalidStatus(String),
    /// 0x0110: the step is COMPLETED or DISCONTINUED and may no longer be updated.
    #[error("the step is {} and may no longer be updated", .0.as_str())]
    Final(PpsStatus),
    /// 0x0111: N-CREATE of a step that exists.
    #[error("a Performed Procedure Step with this SOP Instance UID exists")]
    Duplicate,
    /// 0x0112: N-SET of a step that does not.
    #[error("no Performed Procedure Step with this SOP Instance UID")]
    NoSuchInstance,
}

/// An N-CREATE's status (0040,0252): it must be IN PROGRESS (Type 1).
pub fn on_create(status: Option<&str>) -> Result<PpsStatus, Refusal> {
    match status.map(|s| (s, PpsStatus::parse(s))) {
        Some((_, Some(PpsStatus::InProgress))) => Ok(PpsStatus::InProgress),
        Some((s, _)) => Err(Refusal::InvalidStatus(s.to_owned())),
        None => Err(Refusal::InvalidStatus(String::new())),
    }
}

/// An N-SET on a step now `current`: the status it moves to (`requested`, or unchanged
/// when the N-SET does not set one).
pub fn on_set(current: &str, requested: Option<&str>) -> Result<PpsStatus, Refusal> {
    let now = PpsStatus::parse(current).ok_or_else(|| Refusal::InvalidStatus(current.into()))?;
    if now != PpsStatus::InProgress {
        return Err(Refusal::Final(now));
    }
    match requested {
        None => Ok(now),
        Some(s) => PpsStatus::parse(s).ok_or_else(|| Refusal::InvalidStatus(s.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_in_progress_only() {
        assert_eq!(on_create(Some("IN PROGRESS")), Ok(PpsStatus::InProgress));
        assert!(matches!(
            on_create(Some("COMPLETED")),
            Err(Refusal::InvalidStatus(_))
        ));
        assert!(matches!(on_create(None), Err(Refusal::InvalidStatus(_))));
    }

    #[test]
    fn set_while_in_progress_final_after() {
        assert_eq!(on_set("IN PROGRESS", None), Ok(PpsStatus::InProgress));
        assert_eq!(
            on_set("IN PROGRESS", Some("COMPLETED")),
            Ok(PpsStatus::Completed)
        );
        assert_eq!(
            on_set("IN PROGRESS", Some("DISCONTINUED")),
            Ok(PpsStatus::Discontinued)
        );
        assert!(matches!(
            on_set("IN PROGRESS", Some("DONE")),
            Err(Refusal::InvalidStatus(_))
        ));
        assert_eq!(
            on_set("COMPLETED", Some("IN PROGRESS")),
            Err(Refusal::Final(PpsStatus::Completed))
        );
        assert_eq!(
            on_set("DISCONTINUED", Some("COMPLETED")),
            Err(Refusal::Final(PpsStatus::Discontinued))
        );
        assert_eq!(PpsStatus::Completed.order_status(), OrderStatus::Completed);
    }
}
