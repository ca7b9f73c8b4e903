// attention.cu under the emulator: pack -> flash_fwd_simt, then pack -> bwd_pre -> bwd_dkdv ->
// bwd_dq -> unpack, launched as src/ops/attention.rs (mod cuda) launches them, against causal
// attention with RoPE and grouped KV heads computed in f64 from the math.
#include "emu.h"
#include "attention.inc"

namespace A = mod_attention;
using emu::Buf;
using emu::fmt;

static unsigned ew_blocks(size_t n) { return (unsigned)std::clamp<size_t>((n + 255) / 256, 1, 1u << 20); }

template <class T>
static void run(int B, int Tn, int H, int Hkv, int D, bool small_ew_grids) {
    const int heads = H + 2 * Hkv, W = heads * D, half = D / 2, rep = H / Hkv, TT = Tn + 3;
    const char* dt = emu::dtype_name<T>();
    const std::string tag = fmt("attention %s B=%d T=%d H=%d/%d D=%d%s", dt, B, Tn, H, Hkv, D, small_ew_grids ? " (ew grid-stride)" : "");
    Buf<T> qkv((size_t)B * Tn * W), dout((size_t)B * Tn * H * D);
    emu::randn(qkv);
    emu::randn(dout);
    Buf<float> cs((size_t)TT * half), sn((size_t)TT * half);  // RoPE tables, longer than T
    for (int t = 0; t < TT; t++)
        for (int i = 0; i < half; i++) {
            double a = t * std::pow(10000.0, -(2.0 * i) / D);
            cs[(size_t)t * half + i] = (float)std::cos(a);
            sn[(size_t)t * half + i] = (float)std::sin(a);
        }
    Buf<T> q((size_t)B * H * Tn * D), k((size_t)B * Hkv * Tn * D), v((size_t)B * Hkv * Tn * D), o((size_t)B * Tn * H * D),
        dqkv((size_t)B * Tn * W);
    Buf<float> lse((size_t)B * H * Tn), delta((size_t)B * H * Tn), dq((size_t)B * H * Tn * D), dk((size_t)B * Hkv * Tn * D),
        dv((size_t)B * Hkv * Tn * D);
    const float scale = (float)(1.0 / std::sqrt((double)D));
    const size_t pairs = (size_t)B * Tn * heads * half;
    auto pack = [&](unsigned grid) {
        q.fill_nan(); k.fill_nan(); v.fill_nan();
        emu::launch(EMU_K(T, A, keel_attn_pack), dim3(grid), dim3(256), 0, qkv.data(), cs.data(), sn.data(), q.data(),
                    k.data(), v.data(), B, H, Hkv, Tn, D);
    };
    // Forward (attention.rs: forward).
    pack(ew_blocks(pairs));
    const int rows = D <= 64 ? 64 : 32;
    emu::launch(EMU_K(T, A, keel_flash_fwd_simt), dim3((Tn + rows - 1) / rows, H, B), dim3(256), 0, q.data(), k.data(),
                v.data(), o.data(), lse.data(), B, H, Hkv, Tn, D, scale);
    // Backward (attention.rs: backward, SIMT path): pack again into fresh buffers.
    pack(small_ew_grids ? 3 : ew_blocks(pairs));
    emu::launch(EMU_K(T, A, keel_flash_bwd_pre), dim3((B * Tn * H + 7) / 8), dim3(256), 0, o.data(), dout.data(),
                delta.data(), B, H, Tn, D);
    const unsigned tiles = (Tn + 31) / 32;
    emu::launch(EMU_K(T, A, keel_flash_bwd_dkdv), dim3(tiles, Hkv, B), dim3(256), 0, q.data(), k.data(), v.data(),
                dout.data(), lse.data(), delta.data(), dk.data(), dv.data(), B, H, Hkv, Tn, D, scale);
    emu::launch(EMU_K(T, A, keel_flash_bwd_dq), dim3(tiles, H, B), dim3(256), 0, q.data(), k.data(), v.data(),
                dout.data(), lse.data(), delta.data(), dq.data(), B, H, Hkv, Tn, D, scale);
    emu::launch(EMU_K(T, A, keel_attn_unpack), dim3(small_ew_grids ? 5 : ew_blocks(pairs)), dim3(256), 0, dq.data(),
                dk.data(), dv.data(), cs.data(), sn.data(), dqkv.data(), B, H, Hkv, Tn, D);

    // Reference, f64. q and k are rotated and then rounded to the storage type (pack stores them).
    std::vector<double> rq((size_t)B * H * Tn * D), rk((size_t)B * Hkv * Tn * D), rv((size_t)B * Hkv * Tn * D);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < Tn; t++)
            for (int s = 0; s < heads; s++)
                for (int j = 0; j < half; j++) {
                    const size_t src = ((size_t)b * Tn + t) * W + (size_t)s * D;
                    const double x1 = qkv.get(src + j), x2 = qkv.get(src + j + half);
                    const double c = cs[(size_t)t * half + j], si = sn[(size_t)t * half + j];
                    double* d;
                    if (s < H) d = &rq[(((size_t)b * H + s) * Tn + t) * D];
                    else if (s < H + Hkv) d = &rk[(((size_t)b * Hkv + s - H) * Tn + t) * D];
                    else {
                        d = &rv[(((size_t)b * Hkv + s - H - Hkv) * Tn + t) * D];
                        d[j] = x1;
                        d[j + half] = x2;
                        continue;
                    }
                    d[j] = emu::st<T>(x1 * c - x2 * si);
                    d[j + half] = emu::st<T>(x2 * c + x1 * si);
                }
    std::vector<double> ro((size_t)B * Tn * H * D), rl((size_t)B * H * Tn), rdel((size_t)B * H * Tn), rdq(rq.size(), 0),
        rdk(rk.size(), 0), rdv(rv.size(), 0);
    const double sc = 1.0 / std::sqrt((double)D);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            const int g = h / rep;
            const double* Q = &rq[((size_t)b * H + h) * Tn * D];
            const double* K = &rk[((size_t)b * Hkv + g) * Tn * D];
            const double* V = &rv[((size_t)b * Hkv + g) * Tn * D];
            for (int i = 0; i < Tn; i++) {
                std::vector<double> s(i + 1), p(i + 1), dp(i + 1);
                double mx = -INFINITY;
                for (int j = 0; j <= i; j++) {
                    double a = 0;
                    for (int e = 0; e < D; e++) a += Q[(size_t)i * D + e] * K[(size_t)j * D + e];
                    s[j] = a * sc;
                    mx = std::max(mx, s[j]);
                }
                double sum = 0;
                for (int j = 0; j <= i; j++) sum += std::exp(s[j] - mx);
                rl[((size_t)b * H + h) * Tn + i] = mx + std::log(sum);
                for (int j = 0; j <= i; j++) p[j] = std::exp(s[j] - mx) / sum;
                double* O = &ro[(((size_t)b * Tn + i) * H + h) * D];
                for (int e = 0; e < D; e++) {
                    double a = 0;
                    for (int j = 0; j <= i; j++) a += p[j] * V[(size_t)j * D + e];
                    O[e] = a;
                }
                const size_t dO = (((size_t)b * Tn + i) * H + h) * D;
                double Di = 0;
                for (int e = 0; e < D; e++) Di += dout.get(dO + e) * O[e];
                rdel[((size_t)b * H + h) * Tn + i] = Di;
                for (int j = 0; j <= i; j++) {
                    double a = 0;
                    for (int e = 0; e < D; e++) a += dout.get(dO + e) * V[(size_t)j * D + e];
                    dp[j] = a;
                }
                for (int j = 0; j <= i; j++) {
                    const double ds = p[j] * (dp[j] - Di) * sc;
                    for (int e = 0; e < D; e++) {
                        rdq[(((size_t)b * H + h) * Tn + i) * D + e] += ds * K[(size_t)j * D + e];
                        rdk[(((size_t)b * Hkv + g) * Tn + j) * D + e] += ds * Q[(size_t)i * D + e];
                        rdv[(((size_t)b * Hkv + g) * Tn + j) * D + e] += p[j] * dout.get(dO + e);
                    }
                }
            }
        }
    std::vector<double> rdqkv((size_t)B * Tn * W);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < Tn; t++)
            for (int s = 0; s < heads; s++)
                for (int j = 0; j < half; j++) {
                    double* d = &rdqkv[((size_t)b * Tn + t) * W + (size_t)s * D];
                    const double c = cs[(size_t)t * half + j], si = sn[(size_t)t * half + j];
                    const double* x;
                    if (s < H) x = &rdq[(((size_t)b * H + s) * Tn + t) * D];
                    else if (s < H + Hkv) x = &rdk[(((size_t)b * Hkv + s - H) * Tn + t) * D];
                    else x = &rdv[(((size_t)b * Hkv + s - H - Hkv) * Tn + t) * D];
                    if (s < H + Hkv) {
                        d[j] = x[j] * c + x[j + half] * si;
                        d[j + half] = x[j + half] * c - x[j] * si;
                    } else {
                        d[j] = x[j];
                        d[j + half] = x[j + half];
                    }
                }
    // Packed q and k are the reference's rq, rk (bit-exact up to rounding: products are exact in
    // f64 and pack rounds each product to f32 before the sum).
    const emu::Tol ft = emu::tol_for<T>(2e-5, 1e-2), f32t{2e-5, 2e-5};
    emu::check(tag + " pack q", q, rq, emu::tol_for<T>(1e-6, 4e-3));
    emu::check(tag + " pack k", k, rk, emu::tol_for<T>(1e-6, 4e-3));
    emu::check(tag + " pack v", v, rv, emu::Tol{0, 0});
    emu::check(tag + " fwd out", o, ro, ft);
    // lse, delta: f32 outputs; in bf16 delta reads the kernel's bf16 out.
    emu::check(tag + " fwd lse", lse, rl, f32t);
    emu::check(tag + " bwd_pre delta", delta, rdel, emu::tol_for<T>(2e-5, 1e-2));
    emu::check(tag + " bwd_dkdv dk", dk, rdk, emu::tol_for<T>(5e-5, 3e-2, 1.0));
    emu::check(tag + " bwd_dkdv dv", dv, rdv, emu::tol_for<T>(5e-5, 3e-2, 1.0));
    emu::check(tag + " bwd_dq dq", dq, rdq, emu::tol_for<T>(5e-5, 3e-2, 1.0));
    emu::check(tag + " unpack dqkv", dqkv, rdqkv, emu::tol_for<T>(5e-5, 3e-2, 1.0));
}

int main() {
    // (B, T, H, Hkv, D): D <= 32, <= 64 and above (the three NCH/G variants), T = 1, odd T, several
    // query/key tiles, GQA groups of 1, 2 and 4.
    const int cases[][5] = {{2, 70, 4, 2, 64}, {1, 40, 2, 2, 128}, {2, 37, 4, 1, 18}, {1, 1, 2, 1, 32},
                            {1, 33, 2, 2, 48}, {1, 5, 2, 1, 2},    {1, 70, 2, 1, 128}};
    int i = 0;
    for (auto& c : cases) {
        run<float>(c[0], c[1], c[2], c[3], c[4], i % 2 == 0);
        run<uint16_t>(c[0], c[1], c[2], c[3], c[4], i % 2 == 1);
        i++;
    }
    return emu::finish();
}
