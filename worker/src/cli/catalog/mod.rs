//! Commands about customers and products: `customer add|update`, `product add|get`, each on
//! the shard that owns the id.

pub mod customers;
pub mod products;

use std::fmt;

use orders_core::Shards;
use orders_core::store::customers::NewCustomer;
use orders_core::store::inventory::Stock;
use orders_entities::customer;
use serde::Serialize;

use super::report::Report;

/// A customer just created. As JSON: the stored customer; for people: its id.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub(super) struct CustomerAdded(customer::Model);

pub(super) async fn add_customer(
    shards: &Shards,
    new: NewCustomer,
) -> anyhow::Result<CustomerAdded> {
    Ok(CustomerAdded(customers::add(shards, new).await?))
}

impl fmt::Display for CustomerAdded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.id)
    }
}

impl Report for CustomerAdded {}

/// A customer after a change of contact. As JSON: the stored customer.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub(super) struct CustomerUpdated(customer::Model);

pub(super) async fn update_customer(
    shards: &Shards,
    id: i64,
    name: Option<&str>,
    email: Option<&str>,
) -> anyhow::Result<CustomerUpdated> {
    Ok(CustomerUpdated(
        customers::update(shards, id, name, email).await?,
    ))
}

impl fmt::Display for CustomerUpdated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.0;
        write!(
            f,
            "customer {} is now {} {} <{}>; their orders carry the same",
            c.id, c.first_name, c.last_name, c.email
        )
    }
}

impl Report for CustomerUpdated {}

/// A product's stock and the shard holding it.
#[derive(Debug, Serialize)]
pub(super) struct ProductView {
    #[serde(flatten)]
    stock: Stock,
    available: i32,
    shard: usize,
}

impl ProductView {
    fn new(shards: &Shards, stock: Stock) -> Self {
        Self {
            available: stock.available(),
            shard: shards.for_product(stock.product_id).index,
            stock,
        }
    }
}

/// Sets product `id`'s stock on hand, creating the product.
pub(super) async fn add_product(
    shards: &Shards,
    id: i64,
    name: Option<&str>,
    stock: i32,
) -> anyhow::Result<ProductView> {
    let stock = products::add(shards, id, name, stock).await?;
    Ok(ProductView::new(shards, stock))
}

pub(super) async fn get_product(shards: &Shards, id: i64) -> anyhow::Result<ProductView> {
    let Some(stock) = products::get(shards, id).await? else {
        anyhow::bail!(
            "product {id} does not exist (add it with `orders product add --id {id} --stock N`)"
        );
    };
    Ok(ProductView::new(shards, stock))
}

impl fmt::Display for ProductView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stock;
        write!(
            f,
            "product {} ({}): {} on hand, {} reserved, {} available (shard {})",
            s.product_id,
            s.name.as_deref().unwrap_or("unnamed"),
            s.on_hand,
            s.reserved,
            self.available,
            self.shard
        )
    }
}

impl Report for ProductView {}
