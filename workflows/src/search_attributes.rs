//! Search attributes PlaceOrder keeps up to date, so users find orders in the Web UI and with
//! `temporal workflow list --query 'CustomerId=42'`.
//!
//! The namespace must know them before a workflow sets them, or the server rejects the
//! workflow task: the worker registers missing ones at start where the server allows it,
//! and otherwise refuses to start, listing the
//! `temporal operator search-attribute create --name CustomerId --type Int` commands (one for
//! each entry of [`REGISTRATION`]).

use temporalio_common::protos::temporal::api::enums::v1::IndexedValueType;
use temporalio_common::search_attributes::SearchAttributeUpdate;

pub use orders_activities::search_attributes::{
    CONSISTENCY, CUSTOMER_ID, ORDER_ID, ORDER_STATUS, SHARD,
};

/// Name and Temporal type of every attribute above.
pub const REGISTRATION: [(&str, IndexedValueType); 5] = [
    ("CustomerId", IndexedValueType::Int),
    ("OrderStatus", IndexedValueType::Keyword),
    ("Shard", IndexedValueType::Int),
    ("Consistency", IndexedValueType::Keyword),
    ("OrderId", IndexedValueType::Int),
];

/// A type as the `temporal` CLI spells it (`--type Int`).
pub fn cli_type_name(kind: IndexedValueType) -> &'static str {
    match kind {
        IndexedValueType::Text => "Text",
        IndexedValueType::Keyword => "Keyword",
        IndexedValueType::Int => "Int",
        IndexedValueType::Double => "Double",
        IndexedValueType::Bool => "Bool",
        IndexedValueType::Datetime => "Datetime",
        IndexedValueType::KeywordList => "KeywordList",
        IndexedValueType::Unspecified => "Unspecified",
    }
}

/// Search-attribute changes a workflow holds back and sends together.
///
/// Every upsert is a history event and a write to the visibility store, and changes made in
/// one workflow task reach the server together anyway, when the task completes. A workflow
/// whose steps run inside one task therefore holds its changes and sends them when a client
/// may look for them (see `PlaceOrder`), one upsert instead of one per change. A workflow
/// replaying a history recorded before that sends each change at once, as it did then.
#[derive(Debug, Default)]
pub struct HeldAttributes {
    holding: bool,
    held: Vec<SearchAttributeUpdate>,
}

impl HeldAttributes {
    /// From now on, changes wait for [`HeldAttributes::take`].
    pub fn hold(&mut self) {
        self.holding = true;
    }

    /// Adds `updates`; returns what must be sent now (all of them unless holding). A held
    /// attribute set again keeps only its latest value.
    pub fn add(&mut self, updates: Vec<SearchAttributeUpdate>) -> Vec<SearchAttributeUpdate> {
        if !self.holding {
            return updates;
        }
        for update in updates {
            self.held.retain(|held| held.name() != update.name());
            self.held.push(update);
        }
        Vec::new()
    }

    /// The held changes, to send in one upsert.
    pub fn take(&mut self) -> Vec<SearchAttributeUpdate> {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_changes_keep_the_latest_value_of_each_attribute() {
        let mut attributes = HeldAttributes::default();
        attributes.hold();
        assert!(
            attributes
                .add(vec![ORDER_STATUS.value_set("pending".into())])
                .is_empty()
        );
        assert!(
            attributes
                .add(vec![
                    SHARD.value_set(2),
                    ORDER_STATUS.value_set("confirmed".into())
                ])
                .is_empty()
        );
        let sent = attributes.take();
        let names: Vec<&str> = sent.iter().map(|u| u.name()).collect();
        assert_eq!(names, ["Shard", "OrderStatus"]);
        assert!(attributes.take().is_empty(), "taken once");
    }

    #[test]
    fn changes_go_out_at_once_unless_held() {
        let mut attributes = HeldAttributes::default();
        assert_eq!(attributes.add(vec![SHARD.value_set(1)]).len(), 1);
        assert!(attributes.take().is_empty());
    }
}
