use clap::Parser;
use keel::cli::{Cli, Command};
use keel::{commands, ExitStatus};

// mimalloc: glibc malloc maps and unmaps every tensor over 128 KiB; mimalloc measured 1.5x faster.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (position 15 of `mi_option_e` in mimalloc v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() {
    // Every training step frees and reallocates the same few hundred MB of activations. By default
    // mimalloc returns idle memory to the OS, and the kernel then zeroes the pages again on the next
    // step (measured: 9,300 page faults in a 7-step bench, 500 without purging).
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    // Candle's elementwise pool spin-waits; on 2 cores it intermittently slowed whole runs 5x.
    // keel's fused kernels and matmul use rayon instead. Respect an explicit user setting.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    // Candle's CPU matmul asks for its thread count on every call, and without RAYON_NUM_THREADS
    // that means parsing /proc/cpuinfo (num_cpus::get_physical): about a millisecond per product,
    // which dominated decoding one token at a time. rayon's own default is the same number.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    let cli = Cli::parse();
    let command = match &cli.command {
        Command::Train(_) => "train",
        Command::Bench(_) => "bench",
        Command::Data(_) => "data prepare",
        Command::Probe(_) => "probe",
        Command::Stress(_) => "stress",
        Command::Sweep(_) => "sweep",
        Command::Plot(_) => "plot",
        Command::Eval(_) => "eval",
        Command::Generate(_) => "generate",
        Command::Export(_) => "export",
        Command::Runs(_) => "runs",
    };
    if let Err(why) = keel::ops::simd_limit_from_env() {
        fail(keel::InputError(why).into(), command);
    }
    // Under mpirun / srun: join the job (one rank per process) before anything else.
    if let Err(why) = keel::dist::init() {
        fail(why.into(), command);
    }
    // The command runs on a rayon worker, so the fused kernels' and gemm's parallel loops start
    // from inside the pool instead of waking it from outside on every op (on 2 cores: a third off
    // the deep-narrow bench's step, where ops are small; within noise at R). Workers get a larger
    // stack than the main thread's 8 MiB: Candle's backward pass walks the graph recursively, and
    // graphs of thousands of layers are deep.
    let _ = rayon::ThreadPoolBuilder::new().stack_size(64 << 20).build_global();
    let result = rayon::scope(|_| match cli.command {
        Command::Train(args) => commands::train::run(&args),
        Command::Bench(args) => commands::bench::run(&args),
        Command::Data(keel::cli::DataCommand::Prepare(args)) => commands::data::prepare(&args),
        Command::Probe(args) => commands::probe::run(&args),
        Command::Stress(args) => commands::stress::run(&args),
        Command::Sweep(args) => commands::sweep::run(&args),
        Command::Plot(args) => commands::plot::run(&args),
        Command::Eval(args) => commands::eval::run(&args),
        Command::Generate(args) => commands::generate::run(&args),
        Command::Export(args) => commands::export::run(&args),
        Command::Runs(args) => commands::runs::run(&args),
    });
    match result {
        Ok(ExitStatus::Success) => keel::dist::finish(),
        Ok(status) => {
            keel::dist::finish();
            std::process::exit(status.code())
        }
        Err(err) => fail(err, command),
    }
}

/// What to do after a full disk, for the command that hit it.
fn disk_full_advice(command: &str) -> String {
    let free = "the disk is full: free space or choose another output folder";
    match command {
        "train" | "sweep" | "stress" => format!("{free}; files keel finished earlier (completed checkpoints, CSV rows) are intact; then a run that has its config.toml continues with `keel train --resume RUN_DIR` (a grid: the same command again), and one stopped before writing it starts again with the same command into the same folder"),
        "data prepare" => format!("{free}; the partial shards were removed, so the same command starts again into the same folder"),
        _ => format!("{free}, then run the same command again: keel {command} writes each output file whole, and none was left half-written"),
    }
}

/// One message, the causes under it, and the documented exit status: 2 for bad input, else 1.
fn fail(err: anyhow::Error, command: &str) -> ! {
    let input = keel::is_input_error(&err);
    eprintln!("error: {err}");
    for cause in err.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
    if keel::is_disk_full(&err) {
        eprintln!("  {}", disk_full_advice(command));
    }
    let code = if input { 2 } else { 1 };
    // The other ranks of a job may be waiting for this one: end them all, never hang.
    if keel::dist::world().size() > 1 {
        keel::dist::abort(code);
    }
    std::process::exit(code);
}
