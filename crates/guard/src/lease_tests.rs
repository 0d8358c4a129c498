use super::*;

const SEC: u64 = 1_000_000_000;

fn f(ppm: u32) -> Factor {
    Factor::from_ppm(ppm).unwrap()
}

fn req(demand: u64, holding: Factor) -> LeaseRequest {
    LeaseRequest {
        demand_milli: demand * 1000,
        holding,
        holding_left_ns: 0,
    }
}

#[test]
fn fair_fallback_and_what_a_member_enforces() {
    assert_eq!(fair(0), Factor::ONE);
    assert_eq!(fair(1), Factor::ONE);
    assert_eq!(fair(3).ppm(), 333_333);
    assert_eq!(fair(5_000), Factor::MIN, "never below MIN");
    assert_eq!(fallback(f(800_000), 3).ppm(), 333_333);
    assert_eq!(fallback(f(100_000), 3).ppm(), 100_000);
    let last = Some((f(800_000), 10 * SEC));
    assert_eq!(enforced(None, 3, SEC, 0), Factor::MIN, "no grant yet");
    assert_eq!(enforced(last, 3, SEC, 9 * SEC).ppm(), 800_000);
    assert_eq!(enforced(last, 3, SEC, 10 * SEC).ppm(), 333_333);
    assert_eq!(enforced(last, 3, SEC, 11 * SEC), Factor::MIN);
}

#[test]
fn a_zero_lease_is_refused_and_so_is_a_stranger() {
    assert!(LeaseBook::new(&[1u64], 0, 0).is_err());
    let mut b = LeaseBook::new(&[1u64, 2, 2], SEC, 0).unwrap();
    assert_eq!(b.members(), &[1, 2]);
    assert!(b.grant(9, req(1, Factor::ONE), 2 * SEC).is_err());
}

/// 40 rounds of members 1..=3 renewing (every half lease) with `demand`, each applying
/// every grant; what they enforce never adds up to more than the whole.
fn renew(b: &mut LeaseBook<u64>, demand: [u64; 3], shares: &mut [Factor; 3], t: &mut u64) {
    for _ in 0..40 {
        for (i, d) in demand.iter().enumerate() {
            shares[i] = b.grant(i as u64 + 1, req(*d, shares[i]), *t).unwrap().share;
            let sum: u32 = shares.iter().map(|s| s.ppm()).sum();
            assert!(sum <= 1_000_000, "{sum}");
        }
        *t += SEC / 2;
    }
}

/// Uneven demand: shares follow demand, a member without demand keeps a twentieth of its
/// fair share, and the whole is never exceeded.
#[test]
fn shares_follow_demand_within_the_whole() {
    let mut b = LeaseBook::new(&[1u64, 2, 3], 2 * SEC, 4 * SEC).unwrap();
    let fair = fair(3);
    // Quiet period: nobody grows past what it held when it first asked (under the former
    // leader), and members not heard from count as 1/N.
    assert_eq!(b.holding(2, SEC), fair);
    let l = b.grant(1, req(800, fair), SEC).unwrap();
    assert_eq!(l.share, fair);
    assert_eq!(l.lease_ns, 2 * SEC);
    assert_eq!(
        b.grant(1, req(800, Factor::MIN), 2 * SEC).unwrap().share,
        fair,
        "its former share, though its lease lapsed since"
    );
    assert_eq!(
        b.grant(1, req(800, Factor::ONE), 3 * SEC + SEC / 2)
            .unwrap()
            .share,
        fair
    );
    // After it, and one lease more: silent members hold the minimum.
    assert_eq!(b.holding(2, 5 * SEC), fair, "its fallback may still run");
    assert_eq!(b.holding(2, 6 * SEC), Factor::MIN);
    // Members renewing every quarter of a lease converge on shares in proportion to demand
    // (800, 200, 0): a member without demand keeps a twentieth of its fair share.
    let mut shares = [Factor::MIN; 3];
    let mut t = 6 * SEC;
    renew(&mut b, [800, 200, 0], &mut shares, &mut t);
    let spread = 1_000_000 - 3 * 16_666;
    assert_eq!(shares[2].ppm(), 16_666, "idle: a twentieth of 1/3");
    assert_eq!(shares[1].ppm(), 16_666 + spread / 5);
    assert_eq!(shares[0].ppm(), 16_666 + spread * 4 / 5);
    // Demand moves to 3: it grows only as 1 and 2 give theirs back, and gets there.
    renew(&mut b, [0, 0, 1000], &mut shares, &mut t);
    assert_eq!(shares[2].ppm(), 16_666 + spread);
}

#[test]
fn nobody_asking_gets_the_fair_share_and_silent_members_give_theirs_back() {
    let mut b = LeaseBook::new(&[1u64, 2], SEC, 0).unwrap();
    let t = 2 * SEC;
    assert_eq!(
        b.grant(1, req(0, f(500_000)), t).unwrap().share.ppm(),
        500_000
    );
    let s2 = b.grant(2, req(100, f(500_000)), t).unwrap().share;
    assert_eq!(s2.ppm(), 500_000, "1 still holds its half");
    assert_eq!(b.holding(2, t), s2);
    // 1's lease ran out: it falls back to min(last, 1/2) for a lease, then to the minimum.
    assert_eq!(b.holding(1, t + SEC).ppm(), 500_000);
    assert_eq!(b.holding(1, t + 2 * SEC), Factor::MIN);
    let s2 = b.grant(2, req(100, s2), t + 2 * SEC).unwrap().share;
    assert_eq!(s2.ppm(), 975_000, "1 went silent: all but its idle floor");
    // Everyone wants it all: the others' grants still run, so the first asker cannot take
    // theirs.
    let mut full = LeaseBook::new(&[1u64, 2, 3, 4], SEC, 0).unwrap();
    for m in 1..=4 {
        full.grant(m, req(1_000_000, Factor::ONE), t).unwrap();
    }
    let s = full
        .grant(1, req(1_000_000, Factor::ONE), t + 1)
        .unwrap()
        .share;
    assert_eq!(s.ppm(), 250_000);
}

/// A member that left is counted while its grant and then its fallback may be in force (it
/// may not know yet that it left), then forgotten.
#[test]
fn a_member_that_leaves_is_counted_until_its_lease_ran_out() {
    let mut b = LeaseBook::new(&[1u64, 2], SEC, 0).unwrap();
    let t = 2 * SEC;
    let s2 = b.grant(2, req(10, f(500_000)), t).unwrap().share;
    assert_eq!(s2.ppm(), 975_000, "1 was never heard: the minimum");
    b.set_members(&[1]);
    assert!(b.grant(2, req(10, f(500_000)), t).is_err());
    assert_eq!(
        b.grant(1, req(10, Factor::MIN), t).unwrap().share.ppm(),
        25_000
    );
    // Grant and fallback (1/N = the whole, now) ran out: 2 is forgotten.
    assert_eq!(
        b.grant(1, req(10, Factor::MIN), t + 2 * SEC).unwrap().share,
        Factor::ONE
    );
}

/// A request cannot lower a record: a member is counted at no less than what the book
/// granted it, whatever the request (or someone speaking for it) claims.
#[test]
fn a_request_claiming_less_does_not_free_a_running_grant() {
    let mut b = LeaseBook::new(&[1u64, 2], SEC, 0).unwrap();
    let t = 2 * SEC;
    let s1 = b.grant(1, req(1_000, Factor::MIN), t).unwrap().share;
    assert_eq!(s1.ppm(), 975_000);
    // "1" asks again claiming it holds the minimum and wants nothing.
    b.grant(1, req(0, Factor::MIN), t + 1).unwrap();
    let s2 = b.grant(2, req(1_000, Factor::MIN), t + 2).unwrap().share;
    assert_eq!(s2.ppm(), 25_000, "1's first grant still runs");
}
