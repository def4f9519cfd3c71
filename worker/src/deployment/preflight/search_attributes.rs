//! The namespace must know every search attribute the workflows set, with its type: the
//! server rejects a workflow task that sets an unknown one, and the workflow retries that
//! task forever while its client waits.

use std::collections::HashMap;
use std::time::Duration;

use orders_workflows::search_attributes::{REGISTRATION, cli_type_name as type_name};
use temporalio_client::tonic;
use temporalio_client::{Client, NamespacedClient};
use temporalio_common::protos::temporal::api::enums::v1::IndexedValueType;
use temporalio_common::protos::temporal::api::operatorservice::v1::{
    AddSearchAttributesRequest, ListSearchAttributesRequest,
};

use crate::deployment::Problem;

/// How long registered attributes may take to show up in the namespace's list.
const REGISTRATION_VISIBLE_WITHIN: Duration = Duration::from_secs(15);

/// Registers the attributes the namespace lacks, if the server lets this client; reports
/// attributes of the wrong type, and missing ones it could not register.
pub(super) async fn ensure_registered(client: &Client) -> Vec<Problem> {
    let namespace = client.namespace();
    let known = match list(client, &namespace).await {
        Ok(known) => known,
        Err(status) => {
            return vec![Problem {
                what: format!(
                    "cannot list the search attributes of namespace {namespace:?}: {}",
                    status.message()
                ),
                fix: format!(
                    "check that namespace {namespace:?} exists (`temporal operator namespace describe --namespace {namespace}`) and that this client may read it"
                ),
            }];
        }
    };
    let mut problems = Vec::new();
    let mut missing = Vec::new();
    for &(name, kind) in &REGISTRATION {
        match known.get(name) {
            Some(&have) if have == kind => {}
            Some(&have) => problems.push(Problem {
                what: format!(
                    "search attribute {name} is {} in namespace {namespace:?}; the workflows set it as {}",
                    type_name(have),
                    type_name(kind)
                ),
                fix: format!(
                    "temporal operator search-attribute remove --namespace {namespace} --name {name} --yes && {}",
                    create_command(&namespace, name, kind)
                ),
            }),
            None => missing.push((name, kind)),
        }
    }
    if missing.is_empty() {
        return problems;
    }
    match register(client, &namespace, &missing).await {
        Ok(()) => {
            let names: Vec<_> = missing.iter().map(|(name, _)| *name).collect();
            tracing::info!(namespace, attributes = ?names, "registered missing search attributes");
        }
        Err(reason) => problems.extend(missing.iter().map(|&(name, kind)| Problem {
            what: format!(
                "namespace {namespace:?} has no search attribute {name}, and registering it failed: {reason}"
            ),
            fix: create_command(&namespace, name, kind),
        })),
    }
    problems
}

/// The namespace's custom search attributes and their types.
async fn list(
    client: &Client,
    namespace: &str,
) -> Result<HashMap<String, IndexedValueType>, tonic::Status> {
    let response = client
        .connection()
        .operator_service()
        .list_search_attributes(tonic::Request::new(ListSearchAttributesRequest {
            namespace: namespace.to_owned(),
        }))
        .await?
        .into_inner();
    Ok(response
        .custom_attributes
        .into_iter()
        .map(|(name, kind)| {
            let kind = IndexedValueType::try_from(kind).unwrap_or(IndexedValueType::Unspecified);
            (name, kind)
        })
        .collect())
}

/// Why registering missing search attributes did not work.
#[derive(Debug, thiserror::Error)]
enum RegistrationError {
    /// The server refused to add them (no permission, a bad name, …).
    #[error("{:?}: {}", .0.code(), .0.message())]
    Refused(tonic::Status),
    /// Listing the namespace's attributes afterwards failed.
    #[error("{}", .0.message())]
    NotListed(tonic::Status),
    /// The server accepted them but did not list them in time.
    #[error("the server accepted them but did not list them within {}s", .0.as_secs())]
    NotVisible(Duration),
}

/// Adds `missing` and waits until the namespace lists them.
async fn register(
    client: &Client,
    namespace: &str,
    missing: &[(&str, IndexedValueType)],
) -> Result<(), RegistrationError> {
    client
        .connection()
        .operator_service()
        .add_search_attributes(tonic::Request::new(AddSearchAttributesRequest {
            namespace: namespace.to_owned(),
            search_attributes: missing
                .iter()
                .map(|&(name, kind)| (name.to_owned(), kind as i32))
                .collect(),
        }))
        .await
        .map_err(RegistrationError::Refused)?;
    let deadline = tokio::time::Instant::now() + REGISTRATION_VISIBLE_WITHIN;
    loop {
        let known = list(client, namespace)
            .await
            .map_err(RegistrationError::NotListed)?;
        if missing.iter().all(|(name, _)| known.contains_key(*name)) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(RegistrationError::NotVisible(REGISTRATION_VISIBLE_WITHIN));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The `temporal` CLI command that registers one attribute.
fn create_command(namespace: &str, name: &str, kind: IndexedValueType) -> String {
    format!(
        "temporal operator search-attribute create --namespace {namespace} --name {name} --type {}",
        type_name(kind)
    )
}
