/* A fixed pool of worker threads for the int8 kernels' `threads` option.

   i8r_pool_run splits work items [0, n) into `threads` contiguous parts, part t being
   [n t / T, n (t+1) / T): the caller runs part 0, worker t part t, and the call returns when
   all are done. The kernels split output-channel blocks (Conv) or panels (Gemm): every output
   element is computed by the same code, in the same order, whichever thread runs it, so the
   results are identical to one thread's. Without POSIX threads the pool runs everything on
   the caller. */
#ifndef I8R_POOL_H
#define I8R_POOL_H

#include <stdint.h>
#include <stdlib.h>

typedef void (*i8r_range_fn)(void* ctx, int64_t begin, int64_t end);

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#define I8R_HAVE_THREADS 1
#else
#define I8R_HAVE_THREADS 0
#endif

typedef struct i8r_pool {
    int threads;
#if I8R_HAVE_THREADS
    pthread_t* workers;
    pthread_mutex_t lock;
    pthread_cond_t wake, done;
    uint64_t generation;
    int pending, stop;
    i8r_range_fn fn;
    void* ctx;
    int64_t n;
#endif
} i8r_pool_t;

typedef struct {
    i8r_pool_t* pool;
    int index;
} i8r_worker_arg_t;

static void i8r_pool_part(i8r_range_fn fn, void* ctx, int64_t n, int t, int threads) {
    int64_t b = n * t / threads, e = n * (t + 1) / threads;
    if (e > b) fn(ctx, b, e);
}

#if I8R_HAVE_THREADS
static void* i8r_worker(void* p) {
    i8r_worker_arg_t arg = *(i8r_worker_arg_t*)p;
    i8r_pool_t* pool = arg.pool;
    uint64_t seen = 0;
    free(p);
    for (;;) {
        pthread_mutex_lock(&pool->lock);
        while (pool->generation == seen && !pool->stop) pthread_cond_wait(&pool->wake, &pool->lock);
        if (pool->stop) {
            pthread_mutex_unlock(&pool->lock);
            return NULL;
        }
        seen = pool->generation;
        i8r_range_fn fn = pool->fn;
        void* ctx = pool->ctx;
        int64_t n = pool->n;
        pthread_mutex_unlock(&pool->lock);
        i8r_pool_part(fn, ctx, n, arg.index, pool->threads);
        pthread_mutex_lock(&pool->lock);
        if (--pool->pending == 0) pthread_cond_signal(&pool->done);
        pthread_mutex_unlock(&pool->lock);
    }
}
#endif

/* A pool of `threads` (>= 1) including the caller; NULL when it cannot be made. */
static i8r_pool_t* i8r_pool_new(int threads) {
    i8r_pool_t* pool = (i8r_pool_t*)calloc(1, sizeof(i8r_pool_t));
    if (!pool) return NULL;
    pool->threads = threads < 1 ? 1 : threads;
#if I8R_HAVE_THREADS
    int t;
    pthread_mutex_init(&pool->lock, NULL);
    pthread_cond_init(&pool->wake, NULL);
    pthread_cond_init(&pool->done, NULL);
    pool->workers = (pthread_t*)calloc((size_t)pool->threads, sizeof(pthread_t));
    if (!pool->workers) {
        free(pool);
        return NULL;
    }
    for (t = 1; t < pool->threads; t++) {
        i8r_worker_arg_t* arg = (i8r_worker_arg_t*)malloc(sizeof(i8r_worker_arg_t));
        if (arg) {
            arg->pool = pool;
            arg->index = t;
        }
        if (!arg || pthread_create(&pool->workers[t], NULL, i8r_worker, arg) != 0) {
            free(arg);
            pool->threads = t; /* run with the workers that started */
            break;
        }
    }
#else
    pool->threads = 1;
#endif
    return pool;
}

static void i8r_pool_free(i8r_pool_t* pool) {
    if (!pool) return;
#if I8R_HAVE_THREADS
    int t;
    pthread_mutex_lock(&pool->lock);
    pool->stop = 1;
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);
    for (t = 1; t < pool->threads; t++) pthread_join(pool->workers[t], NULL);
    free(pool->workers);
    pthread_cond_destroy(&pool->wake);
    pthread_cond_destroy(&pool->done);
    pthread_mutex_destroy(&pool->lock);
#endif
    free(pool);
}

/* Run fn over [0, n) on every thread of the pool (NULL: the caller alone). */
static void i8r_pool_run(void* p, i8r_range_fn fn, void* ctx, int64_t n) {
    i8r_pool_t* pool = (i8r_pool_t*)p;
    if (!pool || pool->threads == 1 || n < 2) {
        fn(ctx, 0, n);
        return;
    }
#if I8R_HAVE_THREADS
    pthread_mutex_lock(&pool->lock);
    pool->fn = fn;
    pool->ctx = ctx;
    pool->n = n;
    pool->pending = pool->threads - 1;
    pool->generation++;
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);
    i8r_pool_part(fn, ctx, n, 0, pool->threads);
    pthread_mutex_lock(&pool->lock);
    while (pool->pending) pthread_cond_wait(&pool->done, &pool->lock);
    pthread_mutex_unlock(&pool->lock);
#endif
}

#endif
