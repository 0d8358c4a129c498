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
    // After it: silent members hold the minimum.
    let t = 5 * SEC;
    assert_eq!(b.holding(2, t), Factor::MIN);
    let s2 = b.grant(2, req(200, Factor::MIN), t).unwrap().share;
    let s3 = b.grant(3, req(0, Factor::MIN), t).unwrap().share;
    assert_eq!(s3.ppm(), 16_666, "idle: a twentieth of 1/3");
    // 2's part of (800 + 200), of what is left after the idle floors.
    assert_eq!(s2.ppm(), 16_666 + (1_000_000 - 3 * 16_666) / 5);
    let s1 = b.grant(1, req(800, fair), t).unwrap().share;
    assert_eq!(s1.ppm(), 16_666 + (1_000_000 - 3 * 16_666) * 4 / 5);
    let sum = s1.ppm() + s2.ppm() + s3.ppm();
    assert!(sum <= 1_000_000 && sum > 999_990, "{sum}");
    // Demand moves to 3: it gets only what 1 and 2 do not hold, until they give it back.
    let s3 = b.grant(3, req(1000, s3), t + 1).unwrap().share;
    assert_eq!(s3.ppm(), 1_000_000 - s1.ppm() - s2.ppm());
    let s1 = b.grant(1, req(0, s1), t + 2).unwrap().share;
    assert_eq!(s1.ppm(), 16_666);
    let s3 = b.grant(3, req(1000, s3), t + 3).unwrap().share;
    assert!(s3 > fair && s3.ppm() + s1.ppm() + s2.ppm() <= 1_000_000);
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

#[test]
fn a_member_that_leaves_is_forgotten() {
    let mut b = LeaseBook::new(&[1u64, 2], SEC, 0).unwrap();
    let t = 2 * SEC;
    b.grant(2, req(10, f(500_000)), t).unwrap();
    b.set_members(&[1]);
    assert!(b.grant(2, req(10, f(500_000)), t).is_err());
    assert_eq!(
        b.grant(1, req(10, f(500_000)), t).unwrap().share,
        Factor::ONE
    );
}
