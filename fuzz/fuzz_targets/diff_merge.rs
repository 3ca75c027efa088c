//! flatten, diff and merge against the legacy system's point of view.
//!
//! The input is read as a sequence of record states s0, s1, …, sn (each a small
//! JSON object, flattened, or "no record"). The queue turns each step into
//! `compute(s[i-1], s[i])` and coalesces the deltas that wait with `merge`
//! (SPEC §2; `None` from `merge` means nothing is left to send, and the next
//! change starts a fresh delta). The oracle is what a legacy system holding s0
//! ends up with:
//! - applying every step's delta one by one must give sn, and
//! - applying the one coalesced delta must give sn too (nothing sent: s0 == sn
//!   in effect),
//!
//! where a create needs a legacy system without the record, an update or a
//! delete needs one with it, and a delete must name every path the legacy
//! system holds (the merge rules rely on it when a create follows).
#![no_main]

use hms_sync::diff::{compute, flatten, merge};
use hms_sync::record::{Delta, Flat, Op};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};

const NAMES: &[&str] = &["a", "b", "c", "a.b", "x"];
const MAX_DEPTH: usize = 4;

fn value(u: &mut Unstructured, depth: usize) -> Result<Value> {
    Ok(match u.int_in_range(0..=7)? {
        0 => Value::Null,
        1 => json!(u.int_in_range(0..=3)?),
        2 => json!(["", "v", "a.b"][u.int_in_range(0..=2)?]),
        3 => json!(u.arbitrary::<bool>()?),
        4 => json!([u.int_in_range(0..=2)?]),
        5 => json!({}),
        _ if depth < MAX_DEPTH => Value::Object(object(u, depth + 1)?),
        _ => Value::Null,
    })
}

fn object(u: &mut Unstructured, depth: usize) -> Result<Map<String, Value>> {
    let mut m = Map::new();
    for _ in 0..u.int_in_range(0..=3)? {
        let name = NAMES[u.int_in_range(0..=NAMES.len() - 1)?];
        m.insert(name.to_string(), value(u, depth)?);
    }
    Ok(m)
}

fn state(u: &mut Unstructured) -> Result<Option<Flat>> {
    if u.ratio(1, 4)? {
        return Ok(None);
    }
    Ok(flatten(&object(u, 1)?, 32).ok())
}

/// The legacy system after `delta`; `Err` says the delta cannot apply to it.
fn apply(legacy: Option<Flat>, delta: &Delta) -> std::result::Result<Option<Flat>, String> {
    match (delta.op, legacy) {
        (Op::Create, None) => Ok(Some(delta.set.clone())),
        (Op::Create, Some(l)) => Err(format!("create of a record the legacy system has: {l:?}")),
        (Op::Update, Some(mut l)) => {
            for p in &delta.unset {
                l.remove(p);
            }
            for (p, v) in &delta.set {
                l.insert(p.clone(), v.clone());
            }
            Ok(Some(l))
        }
        (Op::Delete, Some(l)) => match l.keys().find(|p| !delta.unset.contains(*p)) {
            Some(p) => Err(format!(
                "delete does not name {p}, which the legacy system holds"
            )),
            None => Ok(None),
        },
        (op, None) => Err(format!("{op} of a record the legacy system does not have")),
    }
}

fn run(u: &mut Unstructured) -> Result<()> {
    let mut states = vec![state(u)?];
    for _ in 0..u.int_in_range(1..=6)? {
        states.push(state(u)?);
    }
    let first = states[0].clone();
    let last = states.last().unwrap().clone();
    let mut stepwise = first.clone();
    let mut waiting: Option<Delta> = None;
    for w in states.windows(2) {
        let Some(d) = compute(w[0].as_ref(), w[1].as_ref()) else {
            assert_eq!(w[0], w[1], "no delta between different states");
            continue;
        };
        stepwise =
            apply(stepwise, &d).unwrap_or_else(|e| panic!("step {:?} -> {:?}: {e}", w[0], w[1]));
        assert_eq!(stepwise, w[1], "a step's delta does not give its state");
        waiting = match waiting {
            None => Some(d),
            Some(older) => merge(older, d),
        };
    }
    let coalesced = match &waiting {
        None => first.clone(),
        Some(d) => apply(first.clone(), d)
            .unwrap_or_else(|e| panic!("coalesced {d:?} on {first:?} (states {states:?}): {e}")),
    };
    assert_eq!(
        coalesced, last,
        "coalesced delta {waiting:?} on {first:?} is not the last state (states {states:?})"
    );
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
