/* Writes a trace through keel_cupti.c's own row writer, for summarize.py --check-format to read
 * back (CI: no GPU needed). Build and run: see scripts/gpu_profile.sh --self-test. */
#include "keel_cupti.c"

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    out = fopen(argv[1], "w");
    if (!out) return 1;
    fputs("kind,name,start_ns,end_ns,bytes\n", out);
    for (int step = 0; step < 2; step++) {
        row("kernel", "void gemm<float, \"tn\">(Params, int)", 100, 1100, 0);
        row(copy_kind(CUPTI_ACTIVITY_MEMCPY_KIND_DTOH), NULL, 0, 500, 4);
        row("api", "cuLaunchKernel", 0, 30, 0);
    }
    fclose(out);
    return 0;
}
