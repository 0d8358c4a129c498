//! The fail-over rules with fake calls: each address answers from a script, the clock is a
//! number the test moves.

use std::io::{Error, ErrorKind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tonic::Status;

use super::*;

/// How a fake address answers.
#[derive(Clone, Copy, Debug)]
enum Fake {
    Ok,
    /// The connection was refused: nothing was sent.
    Refused,
    /// The connection broke after the request left.
    Reset,
    /// The node answered this code.
    Code(Code),
}

impl Fake {
    fn result(self) -> Result<(), Status> {
        match self {
            Fake::Ok => Ok(()),
            Fake::Refused => Err(Status::from_error(Box::new(tonic::ConnectError(Box::new(
                Error::new(
                    ErrorKind::ConnectionRefused,
                    "Connection refused (os error 111)",
                ),
            ))))),
            Fake::Reset => Err(Status::from_error(Box::new(Error::from(
                ErrorKind::ConnectionReset,
            )))),
            Fake::Code(c) => Err(Status::new(c, "the node says so")),
        }
    }
}

const NAMES: [&str; 3] = ["a:1", "b:2", "c:3"];

struct Rig {
    failover: Failover<usize>,
    now_ns: Arc<AtomicU64>,
    script: Mutex<Vec<Fake>>,
}

impl Rig {
    fn new(script: &[Fake]) -> Rig {
        let now_ns = Arc::new(AtomicU64::new(1));
        let clock = now_ns.clone();
        let targets = (0..script.len())
            .map(|i| (NAMES[i].to_owned(), i))
            .collect();
        let failover = Failover::new(
            targets,
            cli_policy(),
            Arc::new(move || clock.load(Ordering::SeqCst)),
        )
        .expect("valid");
        Rig {
            failover,
            now_ns,
            script: Mutex::new(script.to_vec()),
        }
    }

    fn set(&self, i: usize, f: Fake) {
        self.script.lock().unwrap()[i] = f;
    }

    /// One call from address `start`: the addresses tried, and the answering address or the
    /// error as the user reads it.
    async fn call(&self, start: usize, kind: CallKind) -> (Vec<&'static str>, String) {
        let tried = Mutex::new(Vec::new());
        let r = self
            .failover
            .call_from(start, kind, |i| {
                tried.lock().unwrap().push(NAMES[i]);
                let f = self.script.lock().unwrap()[i];
                async move { f.result() }
            })
            .await;
        let shown = match r {
            Ok((i, ())) => format!("answer from {}", NAMES[i]),
            Err(e) => format!("error: {e}"),
        };
        (tried.into_inner().unwrap(), shown)
    }
}

fn write() -> CallKind {
    CallKind::Write {
        retry: "retry with --id X".into(),
    }
}

/// (kind, each address's answer, the addresses tried, what the caller gets).
fn check(kind: CallKind, script: &[Fake], tried: &[&str], shown: &str) {
    let rig = Rig::new(script);
    let (t, s) = futures::executor::block_on(rig.call(0, kind.clone()));
    assert_eq!(
        (t.as_slice(), s.as_str()),
        (tried, shown),
        "{kind:?} {script:?}"
    );
}

#[test]
fn a_refused_connection_or_unavailable_moves_on_for_any_call() {
    for kind in [CallKind::Read, write(), CallKind::Unknown] {
        check(
            kind.clone(),
            &[Fake::Refused, Fake::Ok],
            &["a:1", "b:2"],
            "answer from b:2",
        );
        check(
            kind.clone(),
            &[Fake::Code(Code::Unavailable), Fake::Refused, Fake::Ok],
            &["a:1", "b:2", "c:3"],
            "answer from c:3",
        );
    }
}

#[test]
fn an_answer_is_final() {
    for code in [
        Code::NotFound,
        Code::InvalidArgument,
        Code::FailedPrecondition,
        Code::AlreadyExists,
        Code::ResourceExhausted,
    ] {
        for kind in [CallKind::Read, write()] {
            check(
                kind,
                &[Fake::Code(code), Fake::Ok],
                &["a:1"],
                &format!("error: a:1 answered {code:?}: the node says so"),
            );
        }
    }
    // Also after a dead address: the answer, not a list of failures.
    check(
        write(),
        &[Fake::Refused, Fake::Code(Code::FailedPrecondition)],
        &["a:1", "b:2"],
        "error: b:2 answered FailedPrecondition: the node says so",
    );
    // One address: its answer reads as it always did.
    check(
        CallKind::Read,
        &[Fake::Code(Code::NotFound)],
        &["a:1"],
        "error: NotFound: the node says so",
    );
}

#[test]
fn a_write_whose_outcome_is_unknown_is_surfaced_not_sent_again() {
    check(
        write(),
        &[Fake::Reset, Fake::Ok],
        &["a:1"],
        "error: the connection to a:1 failed during the call (connection reset); the write \
         may or may not have happened: retry with --id X",
    );
    check(
        write(),
        &[Fake::Code(Code::DeadlineExceeded), Fake::Ok],
        &["a:1"],
        "error: a:1 answered DeadlineExceeded: the node says so; the write may or may not \
         have happened: retry with --id X",
    );
    // After a refused address, the list says what happened where.
    check(
        write(),
        &[Fake::Refused, Fake::Reset, Fake::Ok],
        &["a:1", "b:2"],
        "error: a:1: cannot connect: Connection refused (os error 111); nothing was sent | \
         b:2: the connection failed during the call (connection reset); the write may or may \
         not have happened: retry with --id X",
    );
}

#[test]
fn a_read_whose_connection_broke_moves_on() {
    check(
        CallKind::Read,
        &[Fake::Reset, Fake::Ok],
        &["a:1", "b:2"],
        "answer from b:2",
    );
}

#[test]
fn when_every_address_fails_the_error_names_each_and_why() {
    check(
        write(),
        &[Fake::Refused, Fake::Code(Code::Unavailable), Fake::Refused],
        &["a:1", "b:2", "c:3"],
        "error: every address failed: a:1: cannot connect: Connection refused (os error 111); \
         nothing was sent | b:2: Unavailable: the node says so | c:3: cannot connect: \
         Connection refused (os error 111); nothing was sent",
    );
    check(
        CallKind::Read,
        &[Fake::Refused],
        &["a:1"],
        "error: cannot connect to a:1: Connection refused (os error 111); nothing was sent",
    );
}

#[test]
fn a_call_starts_where_asked_and_goes_round() {
    let rig = Rig::new(&[Fake::Ok, Fake::Refused, Fake::Refused]);
    let (tried, shown) = futures::executor::block_on(rig.call(1, CallKind::Read));
    assert_eq!(tried, ["b:2", "c:3", "a:1"]);
    assert_eq!(shown, "answer from a:1");
}

/// A dead address is tried until its breaker opens, then passed by without a call, probed
/// once after the reset timeout, and used again once the probe passes.
#[test]
fn an_open_breaker_skips_its_address_until_a_probe_passes() {
    futures::executor::block_on(async {
        let rig = Rig::new(&[Fake::Refused, Fake::Ok]);
        let minimum = cli_policy().minimum_calls as usize;
        for _ in 0..minimum {
            assert_eq!(rig.call(0, write()).await.0, ["a:1", "b:2"]);
        }
        assert_eq!(rig.failover.state(0), State::Open);
        for _ in 0..5 {
            assert_eq!(
                rig.call(0, write()).await,
                (vec!["b:2"], "answer from b:2".to_owned())
            );
        }
        let c = rig.failover.counts(0);
        assert_eq!(c.attempts.load(Ordering::Relaxed), minimum as u64);
        assert_eq!(c.failures.load(Ordering::Relaxed), minimum as u64);
        assert_eq!(c.skipped.load(Ordering::Relaxed), 5);

        // Still dead at the probe: open again.
        rig.now_ns
            .fetch_add(cli_policy().reset_timeout_ns, Ordering::SeqCst);
        assert_eq!(rig.call(0, write()).await.0, ["a:1", "b:2"]);
        assert_eq!(rig.failover.state(0), State::Open);
        assert_eq!(rig.call(0, write()).await.0, ["b:2"]);

        // Back: the probe passes and the address is first again.
        rig.set(0, Fake::Ok);
        rig.now_ns
            .fetch_add(cli_policy().reset_timeout_ns, Ordering::SeqCst);
        assert_eq!(rig.call(0, write()).await.0, ["a:1"]);
        assert_eq!(rig.failover.state(0), State::Closed);
        assert_eq!(rig.call(0, write()).await.0, ["a:1"]);
    });
}

#[test]
fn answers_do_not_open_a_breaker() {
    futures::executor::block_on(async {
        let rig = Rig::new(&[Fake::Code(Code::NotFound), Fake::Ok]);
        for _ in 0..20 {
            assert_eq!(rig.call(0, CallKind::Read).await.0, ["a:1"]);
        }
        assert_eq!(rig.failover.state(0), State::Closed);
        rig.set(0, Fake::Code(Code::ResourceExhausted));
        for _ in 0..20 {
            assert_eq!(rig.call(0, write()).await.0, ["a:1"]);
        }
        assert_eq!(rig.failover.state(0), State::Closed);
    });
}

#[test]
fn when_every_breaker_is_open_nothing_is_called_and_the_error_says_so() {
    futures::executor::block_on(async {
        let rig = Rig::new(&[Fake::Refused, Fake::Code(Code::Unavailable)]);
        for _ in 0..cli_policy().minimum_calls {
            rig.call(0, CallKind::Read).await;
        }
        let (tried, shown) = rig.call(0, CallKind::Read).await;
        assert!(tried.is_empty(), "{tried:?}");
        assert_eq!(
            shown,
            "error: every address failed: a:1: not tried, its circuit breaker is open (recent \
             calls failed) | b:2: not tried, its circuit breaker is open (recent calls failed)"
        );
        let r = rig
            .failover
            .call(CallKind::Read, |_| async { Ok(()) })
            .await
            .expect_err("all open");
        assert!(r
            .downcast_ref::<FailoverError>()
            .is_some_and(FailoverError::all_skipped));
    });
}

#[test]
fn addresses_are_listed_in_order_without_blanks() {
    assert_eq!(
        parse_addrs(" a:1, ,b:2,").unwrap(),
        ["a:1".to_owned(), "b:2".to_owned()]
    );
    assert!(parse_addrs(" , ").is_err());
}
