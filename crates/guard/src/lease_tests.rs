use super::*;

const SEC: u64 = 1_000_000_000;

fn f(ppm: u32) -> Factor {
    Factor::from_ppm(ppm).unwrap()
}

fn req(demand: u64, holding: Factor) -> LeaseRequest {
    LeaseRequest {
        demand_milli: demand * 1000,
        holding,
    }
}

#[test]
fn fair_and_fallback() {
    assert_eq!(fair(0), Factor::ONE);
    assert_eq!(fair(1), Factor::ONE);
    assert_eq!(fair(3).ppm(), 333_333);
    assert_eq!(fair(5_000), Factor::MIN, "never below MIN");
    assert_eq!(fallback(f(800_000), 3).ppm(), 333_333);
    assert_eq!(fallback(f(100_000), 3).ppm(), 100_000);
}

#[test]
fn a_zero_lease_is_refused_and_so_is_a_stranger() {
    assert!(LeaseBook::new(&[1u64], 0, 0).is_err());
    let mut b = LeaseBook::new(&[1u64, 2, 2], SEC, 0).unwrap();
    assert_eq!(b.members(), &[1, 2]);
    assert!(b.grant(9, req(1, Factor::ONE), 2 * SEC).is_err());
}

/// Uneven demand: after the quiet period and one round of requests, shares follow demand, a
/// member without demand keeps a twentieth of its fair share, and the whole is never exceeded.
#[test]
fn shares_follow_demand_within_the_whole() {
    let mut b = LeaseBook::new(&[1u64, 2, 3], 2 * SEC, 0).unwrap();
    let fair = fair(3);
    // Quiet period: nobody grows past what it holds.
    let l = b.grant(1, req(800, fair), SEC).unwrap();
    assert_eq!(l.share, fair);
    assert_eq!(l.lease_ns, 2 * SEC);
    let t = 3 * SEC;
    // Member 1 asks first: the others may still hold their fair shares.
    assert_eq!(
        b.grant(1, req(800, fair), t).unwrap().share.ppm(),
        1_000_000 - 2 * 333_333
    );
    let s2 = b.grant(2, req(200, fair), t).unwrap().share;
    let s3 = b.grant(3, req(0, fair), t).unwrap().share;
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
fn nobody_asking_gets_the_fair_share_and_expired_grants_count_as_fallbacks() {
    let mut b = LeaseBook::new(&[1u64, 2], SEC, 0).unwrap();
    let t = 2 * SEC;
    assert_eq!(
        b.grant(1, req(0, f(500_000)), t).unwrap().share.ppm(),
        500_000
    );
    let big = b.grant(2, req(100, f(500_000)), t).unwrap().share;
    assert_eq!(big.ppm(), 500_000, "1 still holds its half");
    assert_eq!(b.holding(2, t), big);
    // 1's lease ran out: it falls back to min(last, 1/2), the book counts the same.
    assert_eq!(b.holding(1, t + SEC).ppm(), 500_000);
    assert_eq!(b.holding(7, t), fair(2), "never granted: 1/N");
    // No member left: a grant cannot reach below MIN.
    let mut b = LeaseBook::new(&[1u64, 2], SEC, 0).unwrap();
    b.grant(1, req(1, Factor::ONE), t).unwrap();
    b.set_members(&[1u64, 2]);
    let mut full = LeaseBook::new(&[1u64, 2, 3, 4], SEC, 0).unwrap();
    full.grant(1, req(1_000_000, Factor::ONE), t).unwrap();
    full.grant(2, req(1_000_000, Factor::ONE), t).unwrap();
    full.grant(3, req(1_000_000, Factor::ONE), t).unwrap();
    full.grant(4, req(1_000_000, Factor::ONE), t).unwrap();
    // Demand of 3 and 4 still counts while their grants run; 1 cannot take theirs.
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
