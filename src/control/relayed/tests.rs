//! Tests of the relayed-connection decisions: which common router, who
//! opens, who is refused.
use super::*;

fn ms(n: u64) -> Option<Duration> {
    Some(Duration::from_millis(n))
}

#[test]
fn the_relay_is_a_neighbour_connected_to_the_target_with_the_lowest_rtt() {
    let target = PeerId(9);
    let with = [target, PeerId(4)];
    let without = [PeerId(4)];
    let choice = pick(
        target,
        [
            (PeerId(1), &with[..], ms(30)),
            (PeerId(2), &without[..], ms(1)),
            (PeerId(3), &with[..], ms(5)),
        ],
    )
    .expect("two common routers");
    assert_eq!(choice.via, PeerId(3), "lowest RTT among the common ones");
    assert_eq!(
        choice.of, 2,
        "the router not connected to the target is no option"
    );
    assert!(pick(target, [(PeerId(2), &without[..], ms(1))]).is_none());
    // The target itself is never its own relay.
    assert!(pick(target, [(target, &with[..], ms(1))]).is_none());
}

#[test]
fn only_the_leading_side_opens_and_a_connected_or_full_table_refuses() {
    let (low, high) = (PeerId(1), PeerId(2));
    assert!(low.leads(high), "the rule this relies on");
    // The higher ID accepts what the lower one opens.
    assert!(accepts(high, low, false, 0));
    // The lower ID never answers an opening from the higher one: that
    // side waits for ours (one rule for both ends, as for dials).
    assert!(!accepts(low, high, false, 0));
    assert!(!accepts(high, low, true, 0), "already connected");
    assert!(!accepts(high, low, false, MAX_SESSIONS), "table full");
}
