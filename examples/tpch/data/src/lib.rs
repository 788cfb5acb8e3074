//! Real TPC-H data from the `tpchgen` crate, shaped as the messages the TPC-H example
//! accepts: an order with its line items nested under `lineitems`, and customers.

use serde_json::{Value, json};
use tpchgen::generators::{CustomerGenerator, LineItemGenerator, OrderGenerator};

/// Orders of scale factor `scale_factor` (1.0 = 1.5 million orders), each with its line
/// items, in order-key order.
pub fn orders(scale_factor: f64) -> impl Iterator<Item = Value> {
    let mut items = LineItemGenerator::new(scale_factor, 1, 1)
        .into_iter()
        .peekable();
    OrderGenerator::new(scale_factor, 1, 1)
        .into_iter()
        .map(move |o| {
            let mut lineitems = Vec::new();
            while let Some(l) = items.next_if(|l| l.l_orderkey == o.o_orderkey) {
                lineitems.push(json!({
                    "l_orderkey": l.l_orderkey,
                    "l_partkey": l.l_partkey,
                    "l_suppkey": l.l_suppkey,
                    "l_linenumber": l.l_linenumber,
                    "l_quantity": l.l_quantity,
                    "l_extendedprice": l.l_extendedprice.to_string(),
                    "l_discount": l.l_discount.to_string(),
                    "l_tax": l.l_tax.to_string(),
                    "l_returnflag": l.l_returnflag,
                    "l_linestatus": l.l_linestatus,
                    "l_shipdate": l.l_shipdate.to_string(),
                    "l_commitdate": l.l_commitdate.to_string(),
                    "l_receiptdate": l.l_receiptdate.to_string(),
                    "l_shipinstruct": l.l_shipinstruct,
                    "l_shipmode": l.l_shipmode,
                    "l_comment": l.l_comment,
                }));
            }
            json!({
                "type": "order",
                "o_orderkey": o.o_orderkey,
                "o_custkey": o.o_custkey,
                "o_orderstatus": o.o_orderstatus.to_string(),
                "o_totalprice": o.o_totalprice.to_string(),
                "o_orderdate": o.o_orderdate.to_string(),
                "o_orderpriority": o.o_orderpriority,
                "o_clerk": o.o_clerk.to_string(),
                "o_shippriority": o.o_shippriority,
                "o_comment": o.o_comment,
                "lineitems": lineitems,
            })
        })
}

/// Customers of scale factor `scale_factor`.
pub fn customers(scale_factor: f64) -> impl Iterator<Item = Value> {
    CustomerGenerator::new(scale_factor, 1, 1)
        .into_iter()
        .map(|c| {
            json!({
                "type": "customer",
                "c_custkey": c.c_custkey,
                "c_name": c.c_name.to_string(),
                "c_address": c.c_address.to_string(),
                "c_nationkey": c.c_nationkey,
                "c_phone": c.c_phone.to_string(),
                "c_acctbal": c.c_acctbal.to_string(),
                "c_mktsegment": c.c_mktsegment,
                "c_comment": c.c_comment,
            })
        })
}
