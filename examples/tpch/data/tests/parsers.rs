//! The generated TPC-H parsers against real TPC-H rows from tpchgen.

use nomnom_runtime::change::{Change, Op};
use nomnom_runtime::json::Value;
use nomnom_runtime::row::Row;
use nomnom_runtime::{EntityName, Envelope};
use tpch_worker::{database, parse, parsers};

/// A generated row as the worker reads it: from the bytes of its JSON.
fn as_read(row: serde_json::Value) -> Value<'static> {
    let bytes = serde_json::to_vec(&row).unwrap();
    nomnom_runtime::json::from_slice(&bytes)
        .unwrap()
        .to_static()
}

fn envelope_for(entity: Option<&str>) -> Envelope {
    Envelope::new(
        entity.map(|e| EntityName::parse(e).unwrap()),
        bytes::Bytes::new(),
    )
}

fn parse_change(
    entity: Option<&str>,
    body: &Value,
) -> Result<Change, nomnom_runtime::parse::ParseError> {
    parse(&envelope_for(entity), body).map(|mut p| p.changes.remove(0))
}

/// A full row's values, as a create carries them.
fn all_of<R: Row>(row: &R) -> Vec<Option<nomnom_runtime::sql::Value>> {
    row.values().into_iter().map(Some).collect()
}

#[test]
fn every_tpch_order_and_line_item_round_trips_into_the_models() {
    let mut orders = 0;
    let mut items = 0;
    for message in tpch_data::orders(0.01).map(as_read) {
        let change =
            parse_change(Some("order"), &message).unwrap_or_else(|e| panic!("{e}: {message}"));
        assert_eq!(change.entity, &database::ORDER);
        assert_eq!(change.op, Op::Create);
        assert_eq!(change.version, None);
        let order = parsers::order::parse(&message, "", &Value::Null).unwrap();
        assert_eq!(change.values, all_of(&order));
        assert_eq!(order.o_orderkey, message["o_orderkey"].as_i64().unwrap());
        assert_eq!(
            order.o_totalprice,
            message["o_totalprice"].as_str().unwrap()
        );
        assert_eq!(
            order.o_orderdate.to_string(),
            message["o_orderdate"].as_str().unwrap()
        );
        assert_eq!(order.o_clerk, message["o_clerk"].as_str().unwrap());
        let expected_items = message["lineitems"].as_array().unwrap();
        let rows = match change.children.as_slice() {
            [] => &[][..],
            [lineitems] => {
                assert_eq!(lineitems.entity, &database::LINEITEM);
                &lineitems.rows[..]
            }
            more => panic!("{} child entities", more.len()),
        };
        assert_eq!(rows.len(), expected_items.len());
        for (index, (row, source)) in rows.iter().zip(expected_items).enumerate() {
            let item = parsers::lineitem::parse(source, "", index, &Value::Null, &order).unwrap();
            assert_eq!(*row, item.values());
            assert_eq!(
                item.l_orderkey, order.o_orderkey,
                "the parent key is copied"
            );
            assert_eq!(
                item.l_linenumber as i64,
                source["l_linenumber"].as_i64().unwrap()
            );
            assert_eq!(
                item.l_extendedprice,
                source["l_extendedprice"].as_str().unwrap()
            );
            assert_eq!(
                item.l_shipdate.to_string(),
                source["l_shipdate"].as_str().unwrap()
            );
            assert_eq!(item.l_comment, source["l_comment"].as_str().unwrap());
        }
        orders += 1;
        items += rows.len();
    }
    assert_eq!(orders, 15_000, "scale factor 0.01 has 15,000 orders");
    assert!(items > 50_000, "{items} line items");
}

#[test]
fn every_tpch_customer_parses() {
    let mut count = 0;
    for message in tpch_data::customers(0.01).map(as_read) {
        let change = parse_change(None, &message).unwrap_or_else(|e| panic!("{e}: {message}"));
        assert_eq!(change.entity, &database::CUSTOMER);
        let customer = parsers::customer::parse(&message, "", &Value::Null).unwrap();
        assert_eq!(change.values, all_of(&customer));
        assert!(change.children.is_empty());
        assert_eq!(customer.c_custkey, message["c_custkey"].as_i64().unwrap());
        assert_eq!(customer.c_acctbal, message["c_acctbal"].as_str().unwrap());
        count += 1;
    }
    assert_eq!(count, 1_500);
}

#[test]
fn routing_uses_the_hint_then_the_discriminator() {
    let order = tpch_data::orders(0.01).map(as_read).next().unwrap();
    // The discriminator says order.
    assert_eq!(parse(&envelope_for(None), &order).unwrap().entity, "order");
    // The hint wins over the discriminator: as a customer, the order lacks c_custkey.
    let err = parse_change(Some("customer"), &order).unwrap_err();
    assert_eq!(err.path, "/c_custkey");
    let err = parse_change(Some("supplier"), &order).unwrap_err();
    assert!(err.message.contains("unknown entity \"supplier\""), "{err}");
    let mut untyped = order.clone();
    untyped.as_object_mut().unwrap().remove("type");
    let err = parse_change(None, &untyped).unwrap_err();
    assert_eq!(err.path, "/type");
}

/// A change that makes a valid order invalid.
type Mutation = Box<dyn Fn(&mut serde_json::Value)>;

#[test]
fn invalid_payloads_name_the_field_path() {
    let order = tpch_data::orders(0.01).next().unwrap();
    let cases: Vec<(Mutation, &str, &str)> = vec![
        (
            Box::new(|o| o["o_totalprice"] = serde_json::json!("-5.00")),
            "/o_totalprice",
            "at least 0",
        ),
        (
            Box::new(|o| o["o_totalprice"] = serde_json::json!("12.345")),
            "/o_totalprice",
            "more than 2 digits",
        ),
        (
            Box::new(|o| o["o_orderstatus"] = serde_json::json!("X")),
            "/o_orderstatus",
            "not one of O, F, P",
        ),
        (
            Box::new(|o| o["o_orderdate"] = serde_json::json!("1996-02-30")),
            "/o_orderdate",
            "not a date",
        ),
        (
            Box::new(|o| o["o_clerk"] = serde_json::json!("Bob")),
            "/o_clerk",
            "does not match",
        ),
        (
            Box::new(|o| o["o_orderkey"] = serde_json::json!("1")),
            "/o_orderkey",
            "expected an integer",
        ),
        (
            Box::new(|o| {
                o.as_object_mut().unwrap().remove("o_custkey");
            }),
            "/o_custkey",
            "is required",
        ),
        (
            Box::new(|o| o["lineitems"][0]["l_discount"] = serde_json::json!("1.50")),
            "/lineitems/0/l_discount",
            "at most 1",
        ),
        (
            Box::new(|o| o["lineitems"][1]["l_shipmode"] = serde_json::json!("x".repeat(11))),
            "/lineitems/1/l_shipmode",
            "limit is 10",
        ),
        (
            Box::new(|o| o["lineitems"] = serde_json::json!("not rows")),
            "/lineitems",
            "expected an array or an object",
        ),
    ];
    for (mutate, path, fragment) in cases {
        let mut message = order.clone();
        mutate(&mut message);
        let err = parse_change(Some("order"), &as_read(message)).expect_err(path);
        assert_eq!(err.path, path, "{err}");
        assert!(err.message.contains(fragment), "{err}");
    }
}
