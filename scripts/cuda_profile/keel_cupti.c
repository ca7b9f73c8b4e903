/* A CUPTI activity tracer for any CUDA process, loaded by the CUDA driver through
 * CUDA_INJECTION64_PATH (no nsys needed, no change to the traced program). It records every GPU
 * kernel, memcpy and memset with its start and end on the GPU clock, and every CUDA driver API
 * call (launches, synchronizations, copies) with its host time, one CSV row each:
 *
 *   kind,name,start_ns,end_ns,bytes
 *   kernel,"affine_f32",1712..,1712..,0
 *   memcpy_dtoh,,..,..,4
 *   api,cuLaunchKernel,..,..,0
 *
 * into $KEEL_CUPTI_OUT (default keel_cupti.csv). scripts/cuda_profile/summarize.py turns two such
 * traces of runs that differ only in their number of steps into a per-step profile.
 *
 * Build (scripts/gpu_profile.sh does it; CI compile-checks it):
 *   gcc -O2 -shared -fPIC -o libkeel_cupti.so keel_cupti.c -I$CUDA_ROOT/include -L$CUDA_ROOT/lib64 -lcupti
 * Run:
 *   CUDA_INJECTION64_PATH=$PWD/libkeel_cupti.so KEEL_CUPTI_OUT=trace.csv keel bench --device cuda ...
 */
#include <cupti.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BUFFER_SIZE (8u << 20)
#define ALIGNMENT 8

static FILE *out;
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;
static size_t dropped;

static void fail(const char *what, CUptiResult r) {
    const char *msg = "?";
    cuptiGetResultString(r, &msg);
    fprintf(stderr, "keel_cupti: %s failed: %s\n", what, msg);
}

/* A CSV field: quoted, with quotes doubled (C++ kernel names hold commas and angle brackets). */
static void put_name(const char *name) {
    if (!name) return;
    fputc('"', out);
    for (const char *c = name; *c; c++) {
        if (*c == '"') fputc('"', out);
        fputc(*c, out);
    }
    fputc('"', out);
}

static void row(const char *kind, const char *name, unsigned long long start, unsigned long long end,
                unsigned long long bytes) {
    fputs(kind, out);
    fputc(',', out);
    put_name(name);
    fprintf(out, ",%llu,%llu,%llu\n", start, end, bytes);
}

static const char *copy_kind(uint8_t k) {
    switch (k) {
    case CUPTI_ACTIVITY_MEMCPY_KIND_HTOD: return "memcpy_htod";
    case CUPTI_ACTIVITY_MEMCPY_KIND_DTOH: return "memcpy_dtoh";
    case CUPTI_ACTIVITY_MEMCPY_KIND_DTOD: return "memcpy_dtod";
    case CUPTI_ACTIVITY_MEMCPY_KIND_HTOH: return "memcpy_htoh";
    default: return "memcpy_other";
    }
}

static void CUPTIAPI buffer_requested(uint8_t **buffer, size_t *size, size_t *max_records) {
    uint8_t *b = NULL;
    if (posix_memalign((void **)&b, ALIGNMENT, BUFFER_SIZE) != 0) b = NULL;
    *buffer = b;
    *size = b ? BUFFER_SIZE : 0;
    *max_records = 0;
}

static void CUPTIAPI buffer_completed(CUcontext ctx, uint32_t stream, uint8_t *buffer, size_t size, size_t valid) {
    (void)ctx;
    (void)stream;
    (void)size;
    CUpti_Activity *record = NULL;
    pthread_mutex_lock(&out_lock);
    while (out && cuptiActivityGetNextRecord(buffer, valid, &record) == CUPTI_SUCCESS) {
        switch (record->kind) {
        case CUPTI_ACTIVITY_KIND_KERNEL:
        case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL: {
            CUpti_ActivityKernel10 *k = (CUpti_ActivityKernel10 *)record;
            row("kernel", k->name, k->start, k->end, 0);
            break;
        }
        case CUPTI_ACTIVITY_KIND_MEMCPY: {
            CUpti_ActivityMemcpy6 *m = (CUpti_ActivityMemcpy6 *)record;
            row(copy_kind(m->copyKind), NULL, m->start, m->end, m->bytes);
            break;
        }
        case CUPTI_ACTIVITY_KIND_MEMSET: {
            CUpti_ActivityMemset4 *m = (CUpti_ActivityMemset4 *)record;
            row("memset", NULL, m->start, m->end, m->bytes);
            break;
        }
        case CUPTI_ACTIVITY_KIND_DRIVER: {
            CUpti_ActivityAPI *a = (CUpti_ActivityAPI *)record;
            const char *name = NULL;
            if (cuptiGetCallbackName(CUPTI_CB_DOMAIN_DRIVER_API, a->cbid, &name) != CUPTI_SUCCESS) name = "unknown";
            row("api", name, a->start, a->end, 0);
            break;
        }
        default:
            break;
        }
    }
    size_t n = 0;
    if (cuptiActivityGetNumDroppedRecords(ctx, stream, &n) == CUPTI_SUCCESS) dropped += n;
    pthread_mutex_unlock(&out_lock);
    free(buffer);
}

static void finish(void) {
    cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
    pthread_mutex_lock(&out_lock);
    if (out) {
        if (dropped) fprintf(stderr, "keel_cupti: %zu records dropped (buffers full)\n", dropped);
        fclose(out);
        out = NULL;
    }
    pthread_mutex_unlock(&out_lock);
}

/* Called by the CUDA driver when CUDA_INJECTION64_PATH names this library, before any context. */
int InitializeInjection(void) {
    const char *path = getenv("KEEL_CUPTI_OUT");
    if (!path || !*path) path = "keel_cupti.csv";
    out = fopen(path, "w");
    if (!out) {
        fprintf(stderr, "keel_cupti: cannot write %s\n", path);
        return 0;
    }
    fputs("kind,name,start_ns,end_ns,bytes\n", out);
    CUptiResult r = cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed);
    if (r != CUPTI_SUCCESS) {
        fail("cuptiActivityRegisterCallbacks", r);
        return 0;
    }
    const CUpti_ActivityKind kinds[] = {CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL, CUPTI_ACTIVITY_KIND_MEMCPY,
                                        CUPTI_ACTIVITY_KIND_MEMSET, CUPTI_ACTIVITY_KIND_DRIVER};
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        r = cuptiActivityEnable(kinds[i]);
        if (r != CUPTI_SUCCESS) fail("cuptiActivityEnable", r);
    }
    atexit(finish);
    fprintf(stderr, "keel_cupti: tracing kernels, copies and driver calls into %s\n", path);
    return 1;
}
