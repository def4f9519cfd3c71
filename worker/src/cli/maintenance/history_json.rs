//! Reading workflow histories in the JSON that Temporal's own tools write.
//!
//! `temporal workflow show --output json` and the Web UI's download use the proto3 JSON
//! mapping (camelCase names, enum names, base64 bytes, RFC 3339 times). The SDK's
//! `WorkflowHistory::from_json` reads only its own serde layout, so this module transcodes
//! proto3 JSON through the Temporal API's descriptors into the protobuf `History` the SDK uses.

use anyhow::Context;
use prost::Message;
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage};
use std::sync::OnceLock;
use temporalio_common::protos::temporal::api::history::v1::History;

static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/temporal_descriptors.bin"));

fn pool() -> anyhow::Result<&'static DescriptorPool> {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    if let Some(pool) = POOL.get() {
        return Ok(pool);
    }
    let pool = DescriptorPool::decode(DESCRIPTORS)
        .context("the Temporal API descriptors do not decode")?;
    Ok(POOL.get_or_init(|| pool))
}

/// Parses a history from proto3 JSON (the CLI's and Web UI's format), or from the SDK's own
/// serde JSON as a fallback.
pub(super) fn parse_history(bytes: &[u8]) -> anyhow::Result<History> {
    let descriptor = pool()?
        .get_message_by_name("temporal.api.history.v1.History")
        .context("the Temporal API descriptors lack temporal.api.history.v1.History")?;
    let mut json = serde_json::Deserializer::from_slice(bytes);
    let options = DeserializeOptions::new().deny_unknown_fields(false);
    match DynamicMessage::deserialize_with_options(descriptor, &mut json, &options) {
        Ok(message) => {
            History::decode(message.encode_to_vec().as_slice()).context("the transcoded history does not decode")
        }
        Err(proto_json_error) => serde_json::from_slice(bytes).map_err(|_| {
            anyhow::anyhow!("not a Temporal history in JSON (expected the output of `temporal workflow show --output json`): {proto_json_error}")
        }),
    }
}
