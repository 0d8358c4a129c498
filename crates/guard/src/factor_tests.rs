use super::*;

#[test]
fn range_is_checked_and_arithmetic_stays_inside() {
    // (ppm, accepted)
    for (ppm, ok) in [
        (0, false),
        (999, false),
        (1_000, true),
        (1_000_000, true),
        (1_000_001, false),
    ] {
        assert_eq!(Factor::from_ppm(ppm).is_ok(), ok, "{ppm}");
    }
    let half = Factor::ONE.halved(Factor::MIN);
    assert_eq!(half.ppm(), 500_000);
    assert_eq!(half.as_f64(), 0.5);
    assert_eq!(Factor::MIN.halved(Factor::MIN), Factor::MIN);
    assert_eq!(half.plus(half).plus(half), Factor::ONE);
    assert_eq!(half.scale(7), 3, "rounds down");
    assert_eq!(half.times(half).ppm(), 250_000);
    assert_eq!(Factor::ONE.times(half), half);
    assert_eq!(Factor::MIN.times(half), Factor::MIN, "never below MIN");
    assert_eq!(
        Factor::ONE.scale(u128::from(u64::MAX)),
        u128::from(u64::MAX)
    );
}

#[test]
fn serde_refuses_a_factor_out_of_range() {
    assert_eq!(serde_json::to_string(&Factor::ONE).unwrap(), "1000000");
    assert_eq!(
        serde_json::from_str::<Factor>("500000").unwrap().ppm(),
        500_000
    );
    let err = serde_json::from_str::<Factor>("5").unwrap_err().to_string();
    assert!(err.contains("factor must be between"), "{err}");
}
