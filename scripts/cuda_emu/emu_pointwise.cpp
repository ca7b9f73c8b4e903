// swiglu.cu and gelu.cu under the emulator, launched as src/ops/swiglu.rs and src/ops/gelu.rs
// (mod cuda) launch them (and with small grids, for the grid-stride loops), against f64
// references written from the math.
#include "emu.h"
#include "swiglu.inc"
#include "gelu.inc"

namespace S = mod_swiglu;
namespace G = mod_gelu;
using emu::Buf;
using emu::fmt;

static unsigned ew_blocks(size_t units) { return (unsigned)std::clamp<size_t>((units + 1023) / 1024, 1, 8192); }
static double sigmoid(double a) { return 1.0 / (1.0 + std::exp(-a)); }

// grid 0: as swiglu.rs (ceil(N F / 1024) blocks, at most 8192).
template <class T>
static void swiglu(int N, int F, int offset, unsigned grid) {
    const unsigned blocks = grid ? grid : ew_blocks((size_t)N * F);
    const std::string tag = fmt("swiglu %s N=%d F=%d%s grid %u", emu::dtype_name<T>(), N, F, offset ? " misaligned" : "", blocks);
    const size_t nf = (size_t)N * F;
    Buf<T> h(2 * nf, offset), dy(nf, offset), y(nf, offset), dh(2 * nf, offset);
    emu::randn(h, 2.0);
    emu::randn(dy);
    emu::launch(EMU_K(T, S, keel_swiglu_fwd), dim3(blocks), dim3(256), 0, h.data(), y.data(), N, F);
    emu::launch(EMU_K(T, S, keel_swiglu_bwd), dim3(blocks), dim3(256), 0, h.data(), dy.data(), dh.data(), N, F);
    std::vector<double> ry(nf), rdh(2 * nf);
    for (int i = 0; i < N; i++)
        for (int j = 0; j < F; j++) {
            const double a = h.get((size_t)i * 2 * F + j), b = h.get((size_t)i * 2 * F + F + j), g = dy.get((size_t)i * F + j);
            const double s = sigmoid(a);
            ry[(size_t)i * F + j] = a * s * b;
            // d/da (a s(a) b) = b (s + a s (1 - s)); d/db = a s.
            rdh[(size_t)i * 2 * F + j] = g * b * (s + a * s * (1 - s));
            rdh[(size_t)i * 2 * F + F + j] = g * a * s;
        }
    const emu::Tol t = emu::tol_for<T>(1e-5, 1.2e-2);
    emu::check(tag + " fwd y", y, ry, t);
    emu::check(tag + " bwd dh", dh, rdh, t);
}

template <class T>
static void gelu(size_t n, int offset, unsigned grid) {
    const unsigned blocks = grid ? grid : ew_blocks(n);
    const std::string tag = fmt("gelu %s n=%zu%s grid %u", emu::dtype_name<T>(), n, offset ? " misaligned" : "", blocks);
    Buf<T> x(n, offset), dy(n, offset), y(n, offset), dx(n, offset);
    emu::randn(x, 2.5);
    emu::randn(dy);
    const double tails[] = {-12.0, -6.5, -3.0, 3.0, 9.0};  // the lower tail, where x Phi(x) is tiny
    for (size_t i = 0; i < std::min<size_t>(5, n); i++) x.set(n - 1 - i, tails[i]);
    emu::launch(EMU_K(T, G, keel_gelu_fwd), dim3(blocks), dim3(256), 0, x.data(), y.data(), (long long)n);
    emu::launch(EMU_K(T, G, keel_gelu_bwd), dim3(blocks), dim3(256), 0, x.data(), dy.data(), dx.data(), (long long)n);
    std::vector<double> ry(n), rdx(n);
    for (size_t i = 0; i < n; i++) {
        const double v = x.get(i);
        const double cdf = 0.5 * std::erfc(-v / std::sqrt(2.0)), pdf = std::exp(-v * v / 2) / std::sqrt(2 * M_PI);
        ry[i] = v * cdf;
        rdx[i] = dy.get(i) * (cdf + v * pdf);
    }
    const emu::Tol t = emu::tol_for<T>(1e-5, 1.2e-2);
    emu::check(tag + " fwd y", y, ry, t);
    emu::check(tag + " bwd dx", dx, rdx, t);
    // The lower tail relative to itself: x Phi(x) must not flush to 0 where it is a normal float.
    if (std::is_same_v<T, float> && n >= 2) {
        const double w = ry[n - 2], g = y.get(n - 2);  // x = -6.5
        emu::check_true(tag + " fwd lower tail x=-6.5", std::fabs(g - w) <= 1e-4 * std::fabs(w),
                        fmt("got %.6g want %.6g", g, w));
    }
}

int main() {
    for (int N : {1, 3, 37})
        for (int F : {1, 33, 128, 130, 1000}) {
            swiglu<float>(N, F, 0, 0);
            swiglu<uint16_t>(N, F, 0, 0);
        }
    // Vector widths through the scalar path, and grids smaller than the work (grid-stride).
    swiglu<float>(37, 128, 1, 0);
    swiglu<uint16_t>(37, 1000, 1, 0);
    swiglu<float>(37, 1000, 0, 3);
    swiglu<uint16_t>(37, 130, 0, 2);
    swiglu<uint16_t>(37, 1000, 1, 5);
    for (size_t n : {1, 3, 33, 37, 128, 130, 1000, 4099, 37000}) {
        gelu<float>(n, 0, 0);
        gelu<uint16_t>(n, 0, 0);
    }
    gelu<float>(4099, 1, 0);
    gelu<uint16_t>(1000, 1, 0);
    gelu<float>(37000, 0, 3);
    gelu<uint16_t>(4099, 0, 2);
    gelu<float>(4099, 1, 2);
    return emu::finish();
}
