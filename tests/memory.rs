//! The one memory plan is the memory that runs: on every shipped spec, for batches of 1 and 3 on 1 and 2
//! threads, the arena the runtime allocates (activations of the batch and the per-thread work buffers) is
//! exactly the plan's `arena_with_work_bytes`.

mod common;

use common::{input, root};
use resnetc_compiler::backend::BackendOptions;
use resnetc_compiler::{Model, Options};

#[test]
fn runtime_allocates_exactly_the_planned_arena() {
    for (name, hw) in [
        ("notebook_resnet50", 64),
        ("resnet18", 40),
        ("resnet34", 32),
        ("resnet50", 32),
        ("resnet101", 32),
        ("resnet152", 32),
    ] {
        let o = Options { input_shape: Some(vec![hw, hw, 3]), ..Default::default() };
        let m = Model::from_file(root(&format!("specs/{name}.yaml")), &o).unwrap();
        for threads in [1, 2] {
            for batch in [1, 3] {
                let c = m.compile(&BackendOptions { threads, ..Default::default() }).unwrap();
                assert_eq!(c.threads(), threads);
                c.run(input(&[hw, hw, 3], batch, 1).view()).unwrap();
                let planned = c.plan.arena_with_work_bytes(batch);
                assert_eq!(
                    c.program.allocated_arena_bytes(),
                    planned,
                    "{name}, {threads} thread(s), batch {batch}: allocated vs planned"
                );
                // The plan's parts: activations scale with the batch, work buffers with the threads.
                assert_eq!(planned, c.plan.arena_bytes * batch + c.plan.work_bytes * threads);
                assert!(c.plan.work_bytes > 0 && c.plan.arena_bytes >= c.plan.lower_bound_bytes);
            }
        }
    }
}
