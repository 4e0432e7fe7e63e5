//! `opossum-bench`: the end-to-end benchmark suite (see [`opossum_bench::suite`]). `scripts/bench.sh` builds the
//! release binaries and runs it.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "opossum-bench",
    version,
    about = "Benchmark suite: start opossumd on a fresh temporary store, seed it, measure, write target/bench/*.json"
)]
struct Cli {
    #[command(flatten)]
    args: opossum_bench::suite::BenchArgs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    opossum_bench::suite::run(&cli.args).map(drop)
}
