// rms_norm.cu and layer_norm.cu under the emulator: forward (plain and fused residual), backward
// (dx, df) and the two-stage dgamma (dbeta) reduction, launched as src/ops/rms_norm.rs and
// src/ops/layer_norm.rs (mod cuda) launch them, against f64 references written from the math.
#include "emu.h"
#include "rms_norm.inc"
#include "layer_norm.inc"

namespace R = mod_rms_norm;
namespace L = mod_layer_norm;
using emu::Buf;
using emu::fmt;

struct Plan {
    bool warp;
    unsigned threads;
    int groups;
};
// `RowNorm::plan` of src/ops/cuda_kernels.rs.
static Plan plan(int c) {
    if (c <= 512) return {true, 256, 8};
    unsigned t = (unsigned)((c + 15) / 16 + 31) / 32 * 32;
    return {false, std::clamp(t, 64u, 512u), 1};
}

// ln = false: RMSNorm, true: LayerNorm. res: fused residual h = alpha x + f. offset: elements every
// tensor starts past a 256-byte boundary (1: misaligned, the scalar path). sms: the device's
// multiprocessor count the backward sizes its grid with (small: rows strided over blocks).
template <class T>
static void run(bool ln, int N, int C, bool res, int offset, int sms) {
    const double alpha = 1.7, eps = 1e-5;
    const Plan p = plan(C);
    const std::string tag = fmt("%s %s N=%d C=%d %s%s%s", ln ? "layer_norm" : "rms_norm", emu::dtype_name<T>(), N, C,
                                res ? "residual" : "plain", offset ? " misaligned" : "",
                                p.warp ? " (warp mode)" : fmt(" (block mode, %u threads)", p.threads).c_str());
    const size_t nc = (size_t)N * C;
    Buf<T> x(nc, offset), f(res ? nc : 0, offset), dy(nc, offset), gamma(C, offset), beta(C, offset), y(nc, offset);
    emu::randn(x, 1.0, 0.3);
    if (res) emu::randn(f, 0.5, -0.2);
    emu::randn(dy);
    emu::randn(gamma, 0.3, 1.0);
    emu::randn(beta, 0.5);
    T* fp = res ? f.data() : nullptr;

    // Forward: grid ceil(N / groups), no dynamic shared memory.
    const unsigned fblocks = (unsigned)std::max(1, (N + p.groups - 1) / p.groups);
    if (ln)
        emu::launch(EMU_K(T, L, keel_layer_norm_fwd), dim3(fblocks), dim3(p.threads), 0, x.data(), fp, gamma.data(),
                    beta.data(), y.data(), N, C, (float)alpha, (float)eps, (int)p.warp);
    else
        emu::launch(EMU_K(T, R, keel_rms_norm_fwd), dim3(fblocks), dim3(p.threads), 0, x.data(), fp, gamma.data(),
                    y.data(), N, C, (float)alpha, (float)eps, (int)p.warp);

    // Backward: out = [dx ; df (res) ; dgamma (; dbeta)] in one buffer, as the Rust side allocates it.
    const int grads = res ? 2 : 1, prows = ln ? 2 : 1;
    Buf<T> out((grads * (size_t)N + prows) * C, offset);
    T* dx = out.data();
    T* df = res ? out.data() + nc : nullptr;
    T* dg = out.data() + grads * nc;
    const int per_sm = std::clamp(2048 / (int)p.threads, 1, 32);
    const int bblocks = std::max(1, std::min((N + p.groups - 1) / p.groups, sms * per_sm));
    const size_t shared = (size_t)p.groups * prows * C * 4;
    Buf<float> partial((size_t)bblocks * prows * C);
    if (ln) {
        emu::launch(EMU_K(T, L, keel_layer_norm_bwd), dim3(bblocks), dim3(p.threads), shared, x.data(), fp, gamma.data(),
                    dy.data(), dx, df, partial.data(), N, C, (float)alpha, (float)eps, (int)p.warp);
        emu::launch(EMU_K(T, L, keel_layer_norm_dparams), dim3((2 * C + 31) / 32), dim3(1024), 0, partial.data(), dg,
                    bblocks, 2 * C);
    } else {
        emu::launch(EMU_K(T, R, keel_rms_norm_bwd), dim3(bblocks), dim3(p.threads), shared, x.data(), fp, gamma.data(),
                    dy.data(), dx, df, partial.data(), N, C, (float)alpha, (float)eps, (int)p.warp);
        emu::launch(EMU_K(T, R, keel_rms_norm_dgamma), dim3((C + 31) / 32), dim3(1024), 0, partial.data(), dg, bblocks, C);
    }

    // Reference (f64).
    std::vector<double> ry(nc), rdx(nc), rdf(nc), rdg(C, 0.0), rdb(C, 0.0);
    std::vector<double> h(C);
    double terms = 0;  // the largest term of any dh: outputs may cancel to ~0 (C = 1 in RMSNorm)
    for (int i = 0; i < N; i++) {
        const size_t o = (size_t)i * C;
        for (int j = 0; j < C; j++) h[j] = res ? alpha * x.get(o + j) + f.get(o + j) : x.get(o + j);
        double mu = 0;
        if (ln) {
            for (int j = 0; j < C; j++) mu += h[j];
            mu /= C;
        }
        double var = 0;  // LayerNorm: biased variance; RMSNorm: mean square
        for (int j = 0; j < C; j++) var += (h[j] - mu) * (h[j] - mu);
        var /= C;
        const double r = 1.0 / std::sqrt(var + eps);
        // y = (h - mu) r gamma (+ beta). Backward from the chain rule:
        //   dL/dh_k = r g_k - r^3 (h_k - mu) mean_j(g_j (h_j - mu)) [- r mean_j g_j for LayerNorm],
        // with g = dy gamma (LayerNorm's -mean(g) comes from mu, whose r^3 term vanishes).
        double sg = 0, sgh = 0;
        for (int j = 0; j < C; j++) {
            const double g = dy.get(o + j) * gamma.get(j);
            sg += g;
            sgh += g * (h[j] - mu);
        }
        for (int j = 0; j < C; j++) {
            const double xh = (h[j] - mu) * r;
            ry[o + j] = xh * gamma.get(j) + (ln ? beta.get(j) : 0.0);
            const double g = dy.get(o + j) * gamma.get(j);
            double dh = r * g - r * r * r * (h[j] - mu) * sgh / C;
            if (ln) dh -= r * sg / C;
            terms = std::max({terms, std::fabs(r * g), std::fabs(r * r * r * (h[j] - mu) * sgh / C), std::fabs(r * sg / C)});
            rdf[o + j] = dh;
            rdx[o + j] = res ? alpha * dh : dh;
            rdg[j] += dy.get(o + j) * xh;
            rdb[j] += dy.get(o + j);
        }
    }
    const emu::Tol t = emu::tol_for<T>(2e-5, 1.2e-2);
    emu::check(tag + " fwd y", y, ry, t);
    emu::Tol tb = t;
    tb.floor = terms * (res ? std::max(alpha, 1.0) : 1.0);
    emu::check(tag + " bwd dx", nc, [&](size_t i) { return emu::from_storage<T>(dx[i]); }, rdx, tb);
    tb.floor = terms;
    if (res) emu::check(tag + " bwd df", nc, [&](size_t i) { return emu::from_storage<T>(df[i]); }, rdf, tb);
    // Sums over rows: the f32 partials carry N-term sums, scale them by their terms' size.
    const emu::Tol ts = emu::tol_for<T>(5e-5, 1.2e-2, 1.0);
    emu::check(tag + " dgamma", C, [&](size_t i) { return emu::from_storage<T>(dg[i]); }, rdg, ts);
    if (ln) emu::check(tag + " dbeta", C, [&](size_t i) { return emu::from_storage<T>(dg[C + i]); }, rdb, ts);
}

int main() {
    const int rows[] = {1, 3, 37};
    const int cols[] = {1, 33, 128, 130, 1000};
    for (bool ln : {false, true})
        for (int N : rows)
            for (int C : cols)
                for (bool res : {false, true}) {
                    run<float>(ln, N, C, res, 0, 1);
                    run<uint16_t>(ln, N, C, res, 0, 1);
                }
    for (bool ln : {false, true}) {
        // Vector widths through the scalar path (every pointer one element off).
        for (int C : {128, 1000}) {
            run<float>(ln, 37, C, true, 1, 1);
            run<uint16_t>(ln, 37, C, false, 1, 1);
        }
        // Rows strided over the backward's blocks in warp mode (8 blocks of 8 rows for 137 rows),
        // block mode with 5 warps (C = 2052: 160 threads), and the H100's grid (132 SMs).
        run<float>(ln, 137, 33, true, 0, 1);
        run<uint16_t>(ln, 137, 128, true, 0, 1);
        run<float>(ln, 37, 2052, true, 0, 1);
        run<uint16_t>(ln, 3, 2052, false, 0, 1);
        run<float>(ln, 137, 1000, true, 0, 132);
        // No rows (Rust still launches one block of each kernel): dgamma (dbeta) = 0.
        run<float>(ln, 0, 33, false, 0, 132);
        run<uint16_t>(ln, 0, 1000, true, 0, 132);
    }
    return emu::finish();
}
