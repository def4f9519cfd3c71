//! Commands about customers and products: `customer add|update`, `product add|get`, each on
//! the shard that owns the id.

use std::fmt;

use orders_activities::Shards;
use orders_activities::store::customers::NewCustomer;
use orders_activities::store::inventory::Stock;
use orders_entities::customer;
use serde::Serialize;

use super::report::Report;
use crate::{customers, products};

/// A customer as it is stored. For people: its id (`customer add`) or its contact.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub(super) struct CustomerView {
    customer: customer::Model,
    #[serde(skip)]
    just_added: bool,
}

pub(super) async fn add_customer(
    shards: &Shards,
    new: NewCustomer,
) -> anyhow::Result<CustomerView> {
    Ok(CustomerView {
        customer: customers::add(shards, new).await?,
        just_added: true,
    })
}

pub(super) async fn update_customer(
    shards: &Shards,
    id: i64,
    name: Option<&str>,
    email: Option<&str>,
) -> anyhow::Result<CustomerView> {
    Ok(CustomerView {
        customer: customers::update(shards, id, name, email).await?,
        just_added: false,
    })
}

impl fmt::Display for CustomerView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.customer;
        if self.just_added {
            return write!(f, "{}", c.id);
        }
        write!(
            f,
            "customer {} is now {} {} <{}>; their orders carry the same",
            c.id, c.first_name, c.last_name, c.email
        )
    }
}

impl Report for CustomerView {}

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
