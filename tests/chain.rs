//! Chained stages (issue 6): registered stages run one after another in one worker
//! process, replicated, with each link's determiner and failures named by link.

use ringpipe::{register_stage, stage_fn, Frame, ItemError, Pipeline, StageSpec};

ringpipe::worker_test_entry!();

// Appends the parameter byte.
register_stage!("c.append", |p: &[u8]| {
    let b = *p.first().ok_or("c.append needs one parameter byte")?;
    Ok(stage_fn(move |f: &mut Frame<'_>| {
        let n = f.len();
        f.set_len(n + 1)?;
        f.bytes_mut()[n] = b;
        Ok(())
    }))
});

// Skips items starting with `s`; fails items starting with `!`.
register_stage!("c.picky", |_: &[u8]| Ok(stage_fn(|f: &mut Frame<'_>| {
    if f.bytes().first() == Some(&b'!') {
        return Err("refused".into());
    }
    f.bytes_mut()[0] = b'P';
    Ok(())
})
.with_determiner(|f: &mut Frame<'_>| f.bytes().first() != Some(&b's'))));

fn chain() -> StageSpec {
    StageSpec::chain([("c.append", &b"1"[..]), ("c.picky", &[][..]), ("c.append", &b"2"[..])])
}

#[test]
fn links_run_in_order_in_one_replicated_worker() {
    let p = Pipeline::builder().stage(chain().replicas(2)).build().unwrap();
    let outs: Vec<Vec<u8>> = p.map([&b"ab"[..], b"sx", b"cd"]).map(|o| o.unwrap().to_vec()).collect();
    assert_eq!(outs, [b"Pb12".to_vec(), b"sx12".to_vec(), b"Pd12".to_vec()], "the determiner skips one link");
    assert_eq!(p.worker_pids().len(), 2, "one process per replica, not per link");
    let stats = p.stats();
    assert_eq!((stats.stages.len(), stats.stages[0].items), (1, 3));
    assert_eq!(stats.stages[0].name, "c.append+c.picky+c.append", "a chain shows its links");
    assert!(p.shutdown().was_graceful());
}

#[test]
fn a_failing_link_fails_the_item_naming_the_link() {
    let p = Pipeline::builder().stage(chain()).build().unwrap();
    let out = p.submit(b"!x").unwrap().wait().or_else(ItemError::into_output).unwrap();
    let failure = out.failure().expect("c.picky refuses it");
    assert_eq!(failure.stage, 0);
    assert_eq!(failure.message, "c.picky: refused");
    assert_eq!(&out[..], b"!x1", "the link after the failure did not run");
}

#[test]
fn an_unknown_link_is_a_build_error_naming_it() {
    let err = Pipeline::builder()
        .stage(StageSpec::chain([("c.append", &b"1"[..]), ("c.nope", &[][..])]))
        .build()
        .err()
        .unwrap();
    assert!(err.to_string().contains("c.nope"), "{err}");
}
