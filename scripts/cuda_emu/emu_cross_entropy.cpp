// cross_entropy.cu under the emulator: forward (row loss and lse), mean, in-place backward,
// launched as src/ops/cross_entropy.rs launches them, against f64 references from the math.
#include "emu.h"
#include "cross_entropy.inc"

namespace X = mod_cross_entropy;
using emu::Buf;
using emu::fmt;

// row_threads of cross_entropy.rs.
static unsigned row_threads(int v) {
    unsigned t = (unsigned)((v + 3) / 4 + 31) / 32 * 32;
    return std::clamp(t, 32u, 512u);
}

// bad_target: row 0's target is V (out of range: its loss and the mean are NaN). neg_inf: row
// N-1 starts with -inf logits (a masked vocabulary). offset: z starts that many elements past an
// aligned address.
template <class T>
static void run(int N, int V, bool bad_target, bool neg_inf, int offset) {
    const std::string tag = fmt("cross_entropy %s N=%d V=%d%s%s%s", emu::dtype_name<T>(), N, V, bad_target ? " bad-target" : "",
                                neg_inf ? " -inf" : "", offset ? fmt(" offset %d", offset).c_str() : "");
    const size_t nv = (size_t)N * V;
    Buf<T> z(nv, offset), dloss(1);
    Buf<unsigned> targets(N);
    Buf<float> stats(2 * (size_t)N);
    Buf<T> loss(1);
    emu::randn(z, 3.0);
    if (neg_inf && V > 3)
        for (int j = 0; j < 3; j++) z.set((size_t)(N - 1) * V + j, -INFINITY);
    std::uniform_int_distribution<int> pick(0, V - 1);
    for (int i = 0; i < N; i++) targets[i] = (unsigned)pick(emu::rng());
    if (neg_inf && V > 3) targets[N - 1] = 3 + (unsigned)(V - 4) / 2;
    if (bad_target) targets[0] = (unsigned)V;
    dloss.set(0, 0.75);
    std::vector<double> z0(nv);
    for (size_t i = 0; i < nv; i++) z0[i] = z.get(i);

    emu::launch(EMU_K(T, X, keel_cross_entropy_fwd), dim3(N), dim3(row_threads(V)), 0, z.data(), targets.data(),
                stats.data(), N, V);
    emu::launch(EMU_K(T, X, keel_cross_entropy_mean), dim3(1), dim3(512), 0, stats.data(), loss.data(), N);
    emu::launch(EMU_K(T, X, keel_cross_entropy_bwd), dim3(N), dim3(row_threads(V)), 0, z.data(), targets.data(),
                stats.data() + N, dloss.data(), N, V);

    std::vector<double> rloss(N), rlse(N), rmean(1, 0.0), rdz(nv);
    for (int i = 0; i < N; i++) {
        const double* row = &z0[(size_t)i * V];
        double mx = -INFINITY;
        for (int j = 0; j < V; j++) mx = std::max(mx, row[j]);
        double s = 0;
        for (int j = 0; j < V; j++) s += std::exp(row[j] - mx);
        const double lse = mx + std::log(s);
        rlse[i] = lse;
        rloss[i] = targets[i] < (unsigned)V ? lse - row[targets[i]] : NAN;
        rmean[0] += rloss[i] / N;
        const double scale = 0.75 / N;
        for (int j = 0; j < V; j++) rdz[(size_t)i * V + j] = (std::exp(row[j] - lse) - ((unsigned)j == targets[i] ? 1.0 : 0.0)) * scale;
    }
    const emu::Tol f32t{2e-5, 2e-5, 1.0};
    emu::check(tag + " fwd loss_i", N, [&](size_t i) { return (double)stats[i]; }, rloss, f32t);
    emu::check(tag + " fwd lse_i", N, [&](size_t i) { return (double)stats[N + i]; }, rlse, f32t);
    emu::check(tag + " mean loss", loss, rmean, emu::tol_for<T>(2e-5, 8e-3));
    emu::check(tag + " bwd dz (in place)", z, rdz, emu::tol_for<T>(2e-5, 1.2e-2));
}

// The mean kernel alone over many rows (each of its 512 threads sums several) and over none.
template <class T>
static void mean_only(int N) {
    Buf<float> stats(std::max(N, 1));
    for (int i = 0; i < N; i++) stats[i] = (float)std::uniform_real_distribution<double>(0, 12)(emu::rng());
    Buf<T> loss(1);
    emu::launch(EMU_K(T, X, keel_cross_entropy_mean), dim3(1), dim3(512), 0, stats.data(), loss.data(), N);
    std::vector<double> want(1, 0.0);
    for (int i = 0; i < N; i++) want[0] += stats[i];
    want[0] = N ? want[0] / N : NAN;  // N = 0: 0 / 0, as on the CPU
    emu::check(fmt("cross_entropy %s mean only N=%d", emu::dtype_name<T>(), N), loss, want, emu::tol_for<T>(2e-6, 8e-3));
}

int main() {
    for (int N : {1, 3, 37})
        for (int V : {1, 33, 128, 130, 1000}) {
            run<float>(N, V, false, false, 0);
            run<uint16_t>(N, V, false, false, 0);
        }
    // Odd V: every row starts at a different alignment (head, vector body, tail); long rows (each
    // thread loops); rows of a misaligned z; an out-of-range target; masked logits.
    run<float>(3, 50257, true, true, 0);
    run<uint16_t>(2, 50257, false, true, 1);
    run<float>(37, 5003, false, true, 1);
    run<uint16_t>(37, 130, true, false, 3);
    run<float>(37, 1000, true, true, 2);
    run<uint16_t>(3, 33, true, true, 0);
    for (int N : {0, 1, 1300}) {
        mean_only<float>(N);
        mean_only<uint16_t>(N);
    }
    return emu::finish();
}
