// adamw.cu under the emulator: sumsq -> clip -> update over a table of tensors, launched as
// src/optim.rs (FusedAdamW::launch) launches them, for a few steps, each step checked against an
// f64 clip_grad_norm + AdamW step (PyTorch's order) taken from the kernels' previous state.
#include "emu.h"
#include "adamw.inc"

namespace W = mod_adamw;
using emu::Buf;
using emu::fmt;

struct Hyper {
    double lr, wd, b1, b2, eps;
};

enum class Grad { Normal, NaN, Inf };

// sizes: elements per tensor (0: an empty tensor); misaligned: tensor indices whose parameter starts
// one element off (the scalar path for those tensors); chunk and max_blocks: CHUNK and MAX_BLOCKS
// of optim.rs (16384, 65535) or small values for the chunk walk and the grid-stride loop.
template <class T>
static void run(const std::vector<long long>& sizes, const std::vector<int>& misaligned, int chunk, int max_blocks,
                double max_norm, Grad bad, int steps, const char* what) {
    const int n = (int)sizes.size();
    const Hyper h{1e-2, 0.1, 0.9, 0.95, 1e-8};
    std::vector<Buf<T>> p(n), g(n);
    std::vector<Buf<float>> m(n), v(n);
    for (int t = 0; t < n; t++) {
        const bool off = std::find(misaligned.begin(), misaligned.end(), t) != misaligned.end();
        p[t].alloc(sizes[t], off ? 1 : 0);
        g[t].alloc(sizes[t]);
        m[t].alloc(sizes[t]);
        v[t].alloc(sizes[t]);
        emu::randn(p[t], 0.1);
        for (long long i = 0; i < sizes[t]; i++) m[t][i] = v[t][i] = 0.f;
    }
    // The table as optim.rs writes it: 7 columns of n i64 (params, grads, ms, vs, lens, decays,
    // chunk_start) and chunk_start's extra last entry.
    std::vector<long long> table(7 * (size_t)n + 1, 0);
    long long chunks = 0;
    for (int t = 0; t < n; t++) {
        table[t] = (long long)(uintptr_t)p[t].data();
        table[n + t] = (long long)(uintptr_t)g[t].data();
        table[2 * n + t] = (long long)(uintptr_t)m[t].data();
        table[3 * n + t] = (long long)(uintptr_t)v[t].data();
        table[4 * n + t] = sizes[t];
        table[5 * n + t] = t % 3 != 1;  // some tensors without weight decay
        chunks += (sizes[t] + chunk - 1) / chunk;
        table[6 * n + t + 1] = chunks;
    }
    auto col = [&](int k) { return table.data() + (size_t)k * n; };
    const auto* cols_u64 = reinterpret_cast<const unsigned long long*>(table.data());
    const unsigned blocks = (unsigned)std::clamp<long long>(chunks, 1, max_blocks);
    Buf<double> partials(std::max<long long>(chunks, 1)), out(n + 3);

    for (int step = 1; step <= steps; step++) {
        const std::string tag = fmt("adamw %s %s step %d", emu::dtype_name<T>(), what, step);
        std::normal_distribution<double> nd(0.0, 0.5);
        for (int t = 0; t < n; t++) emu::randn(g[t], 0.5);
        if (bad != Grad::Normal) {
            int t = n > 2 ? 2 : n - 1;
            g[t].set(sizes[t] / 2, bad == Grad::NaN ? NAN : INFINITY);
        }
        // The state before the step (the reference starts from it).
        std::vector<std::vector<double>> p0(n), g0(n), m0(n), v0(n);
        for (int t = 0; t < n; t++)
            for (long long i = 0; i < sizes[t]; i++) {
                p0[t].push_back(p[t].get(i));
                g0[t].push_back(g[t].get(i));
                m0[t].push_back(m[t][i]);
                v0[t].push_back(v[t][i]);
            }
        partials.fill_nan();
        out.fill_nan();
        const double bc1 = 1 - std::pow(h.b1, step), bc2 = 1 - std::pow(h.b2, step);
        emu::launch(EMU_K(T, W, keel_adamw_sumsq), dim3(blocks), dim3(256), 0, cols_u64 + n, col(4), col(6), n, chunk,
                    partials.data());
        emu::launch(EMU_K1(W, keel_adamw_clip_f64), dim3(1), dim3(512), 0, partials.data(), col(6), n,
                    emu_bits<long long>(max_norm), out.data());
        emu::launch(EMU_K(T, W, keel_adamw_update), dim3(blocks), dim3(256), 0, cols_u64, cols_u64 + n, cols_u64 + 2 * n,
                    cols_u64 + 3 * n, col(4), col(5), col(6), n, chunk, out.data() + n, (float)h.b1, (float)h.b2,
                    (float)h.eps, (float)(h.lr / bc1), (float)(1.0 / bc2), (float)(1.0 - h.lr * h.wd));

        // Reference: clip_grad_norm_ (total 2-norm, coef = max_norm / (norm + 1e-6) when above it),
        // skip on a non-finite norm, then AdamW with decoupled weight decay and bias corrections.
        std::vector<double> rs(n + 3, 0.0);
        double total = 0;
        for (int t = 0; t < n; t++) {
            for (double x : g0[t]) rs[t] += x * x;
            total += rs[t];
        }
        const double norm = std::sqrt(total);
        const double coef = (max_norm > 0 && norm > max_norm) ? max_norm / (norm + 1e-6) : 1.0;
        const bool skip = !std::isfinite(norm);
        rs[n] = norm;
        rs[n + 1] = coef;
        rs[n + 2] = skip ? 1.0 : 0.0;
        emu::check(tag + " sums, norm, coef, skip", out, rs, emu::Tol{1e-12, 0, 1e-300});
        // Every tensor's elements, flattened in tensor order (got, want, allowed error, where).
        std::vector<double> gp, rp, bp, gm, rm, gv, rv;
        std::vector<std::pair<int, long long>> where;
        bool untouched = true;
        for (int t = 0; t < n; t++) {
            const double decay = table[5 * n + t] ? 1 - h.lr * h.wd : 1.0;
            for (long long i = 0; i < sizes[t]; i++) {
                double wp = p0[t][i], wm = m0[t][i], wv = v0[t][i], bound = 0;
                if (!skip) {
                    const double gi = g0[t][i] * coef;
                    wm = h.b1 * m0[t][i] + (1 - h.b1) * gi;
                    wv = h.b2 * v0[t][i] + (1 - h.b2) * gi * gi;
                    const double denom = std::sqrt(wv / bc2) + h.eps;
                    wp = p0[t][i] * decay - h.lr / bc1 * wm / denom;
                    // Within an ulp or two of the storage type (the kernel rounds p decay, the step
                    // and their difference), plus the f32 error of the step, sized from its terms
                    // (m may cancel b1 m0 against (1 - b1) g; optim.rs passes the scalars in f32, and
                    // 1 - 0.9f is 2.4e-7 off 0.1).
                    const double terms = h.lr / bc1 * (std::fabs(h.b1 * m0[t][i]) + std::fabs((1 - h.b1) * gi)) / denom;
                    bound = 2 * emu::ulp<T>(wp) + 2e-6 * terms + 1e-7 * std::fabs(p0[t][i]);
                }
                gp.push_back(p[t].get(i));
                rp.push_back(wp);
                bp.push_back(bound + 1e-30);
                gm.push_back(m[t][i]);
                rm.push_back(wm);
                gv.push_back(v[t][i]);
                rv.push_back(wv);
                where.push_back({t, i});
                if (skip) untouched &= emu_bits<uint64_t>(gp.back()) == emu_bits<uint64_t>(p0[t][i]);
            }
        }
        const size_t total_n = rp.size();
        const std::string all = fmt("%s (%d tensors, %zu elements)", tag.c_str(), n, total_n);
        auto at = [&](const std::vector<double>& got, const std::vector<double>& want, auto bound) {
            // On a failure, the first bad element of each tensor (the check line gives a flat index).
            for (int t = 0, last = -1; t < (int)total_n; t++) {
                const size_t i = (size_t)t;
                if (where[i].first == last) continue;
                const double e = std::fabs(got[i] - want[i]);
                if (!(e <= bound(i)) && !(std::isnan(got[i]) && std::isnan(want[i]))) {
                    last = where[i].first;
                    std::printf("     tensor %d element %lld: got %.9g want %.9g\n", where[i].first, where[i].second,
                                got[i], want[i]);
                }
            }
        };
        auto get = [](const std::vector<double>& v) { return [&v](size_t i) { return v[i]; }; };
        auto pb = [&](size_t i) { return bp[i]; };
        if (!emu::check_bound(all + " p", total_n, get(gp), rp, pb)) at(gp, rp, pb);
        const emu::Tol mt{1e-5, 1e-6, 1e-30};
        if (!emu::check(all + " m", total_n, get(gm), rm, mt)) at(gm, rm, [&](size_t i) { return 1e-5 * std::fabs(rm[i]) + 1e-7; });
        if (!emu::check(all + " v", total_n, get(gv), rv, mt)) at(gv, rv, [&](size_t i) { return 1e-5 * std::fabs(rv[i]) + 1e-7; });
        if (skip) emu::check_true(all + " p untouched (skipped step)", untouched);
    }
}

int main() {
    // Rust's CHUNK and MAX_BLOCKS: tensors of 1 .. 3 chunks, an empty one, misaligned ones.
    const std::vector<long long> sizes = {37, 0, 16384 + 37, 1, 1000, 3, 33000};
    for (int bf = 0; bf < 2; bf++) {
        auto go = [&](auto tag, const std::vector<long long>& sz, const std::vector<int>& mis, int chunk, int mb,
                      double max_norm, Grad bad, int steps, const char* what) {
            using T = decltype(tag);
            run<T>(sz, mis, chunk, mb, max_norm, bad, steps, what);
        };
        auto both = [&](auto... a) {
            if (bf == 0) go(float{}, a...);
            else go(uint16_t{}, a...);
        };
        both(sizes, std::vector<int>{4}, 16384, 65535, 0.0, Grad::Normal, 3, "no clip");
        both(sizes, std::vector<int>{0, 2}, 16384, 65535, 1.0, Grad::Normal, 2, "clip 1.0");
        both(sizes, std::vector<int>{}, 16384, 65535, 1e9, Grad::Normal, 1, "clip above norm");
        // Small chunks over a grid of 3 blocks: every block walks many chunks of several tensors.
        both(std::vector<long long>{130, 1, 0, 1000, 37, 4099}, std::vector<int>{3}, 64, 3, 2.0, Grad::Normal, 2,
             "chunk 64 grid 3");
        // More tensors than the clip kernel has warps (16), empty ones first and last.
        std::vector<long long> many(40);
        for (int t = 0; t < 40; t++) many[t] = t == 0 || t == 39 || t % 7 == 3 ? 0 : (t * 37) % 301;
        both(many, std::vector<int>{5, 6}, 64, 7, 3.0, Grad::Normal, 2, "40 tensors chunk 64 grid 7");
        both(sizes, std::vector<int>{}, 16384, 65535, 1.0, Grad::NaN, 1, "NaN gradient");
        both(std::vector<long long>{37, 1000, 130}, std::vector<int>{}, 64, 65535, 1.0, Grad::Inf, 1, "Inf gradient");
    }
    return emu::finish();
}
