//! Radiology order ids: the hospital's, short printable text without separators.

use std::fmt;

/// 1 to 64 ASCII letters, digits or `- _ . :`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(into = "String")]
pub struct OrderId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("order ids are 1 to 64 letters, digits or - _ . : (not {0:?})")]
pub struct OrderIdError(pub String);

impl OrderId {
    pub fn parse(raw: &str) -> Result<Self, OrderIdError> {
        let ok = !raw.is_empty()
            && raw.len() <= 64
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
        if ok {
            Ok(OrderId(raw.to_owned()))
        } else {
            Err(OrderIdError(raw.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OrderId({})", self.0)
    }
}

impl TryFrom<String> for OrderId {
    type Error = OrderIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        OrderId::parse(&s)
    }
}

impl From<OrderId> for String {
    fn from(id: OrderId) -> String {
        id.0
    }
}

/// Where an order is in its workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Waiting for the modality: its steps are on the worklist.
    Scheduled,
    /// A modality started it (MPPS IN PROGRESS).
    InProgress,
    /// Performed (MPPS COMPLETED).
    Completed,
    /// Cancelled or stopped (HL7 CA/DC, MPPS DISCONTINUED).
    Discontinued,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 4] = [
        OrderStatus::Scheduled,
        OrderStatus::InProgress,
        OrderStatus::Completed,
        OrderStatus::Discontinued,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Scheduled => "scheduled",
            OrderStatus::InProgress => "in_progress",
            OrderStatus::Completed => "completed",
            OrderStatus::Discontinued => "discontinued",
        }
    }

    pub fn parse(s: &str) -> Option<OrderStatus> {
        OrderStatus::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Completed and discontinued orders are done: nothing moves them on.
    pub fn is_final(self) -> bool {
        matches!(self, OrderStatus::Completed | OrderStatus::Discontinued)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(OrderId::parse("ORD-2026.11:7_a").is_ok());
        assert!(OrderId::parse("").is_err());
        assert!(OrderId::parse("a/b").is_err());
        assert!(OrderId::parse("a b").is_err());
        assert!(OrderId::parse(&"1".repeat(65)).is_err());
    }

    #[test]
    fn statuses_round_trip() {
        for s in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(OrderStatus::parse("cancelled"), None);
        assert!(OrderStatus::Completed.is_final() && !OrderStatus::InProgress.is_final());
    }
}
