/* The compiled relay core: plain sessions relayed by one native thread, with the GIL released.
 *
 * A session whose next bytes need no decision of the server's (no pgml statement, no local
 * statement or portal, nothing owed to a local step) is *attached*: the Python side pauses
 * reading on both of its sockets and hands their file descriptors to this thread, which relays
 * whole messages between them with epoll, as PgBouncer does, keeping the one piece of state the
 * session needs to be handed back exactly: the FIFO of answers the upstream still owes (the same
 * rules as pipeline/rules.py: one entry per Parse/Bind/Describe/Close/Execute, Sync and Query,
 * finished by the same message types) with the transaction status, the unsynced and implicit-
 * transaction flags.
 *
 * The thread hands a session back to Python, at a message boundary and without having acted on
 * the message, the moment anything could need the server: a client message that mentions pgml,
 * one of a type or size it does not relay (Terminate, FunctionCall, COPY data, a malformed one),
 * an upstream message other than the plain answers (an ErrorResponse, COPY, ...), end of file or
 * a socket error. What it has not relayed yet travels with the state; Python writes, feeds and
 * goes on exactly as if it had relayed everything itself. Python can also take a session back
 * (`detach`), e.g. at shutdown.
 *
 * Threading: the thread never touches a Python object. It holds `mu` while it handles one batch
 * of epoll events; attach, detach and collect take `mu` (under the GIL, briefly). A session
 * leaves epoll under `mu`; its memory is freed only once no batch can still name it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

/* FIFO entry kinds: pipeline/rules.py's EXT, SYNC, SIMPLE. */
enum { K_EXT = 0, K_SYNC = 1, K_SIMPLE = 2 };
enum { ST_ATTACHED = 1, ST_RETURNED = 2, ST_DETACHED = 3 };
/* Why a session came back (relay.py names them). */
enum { R_CLIENT_MESSAGE = 1, R_UPSTREAM_MESSAGE = 2, R_CLIENT_EOF = 3, R_UPSTREAM_EOF = 4,
       R_CLIENT_ERROR = 5, R_UPSTREAM_ERROR = 6, R_DETACHED = 7 };
enum { CLIENT = 0, UPSTREAM = 1 };

#define READ_CHUNK 65536
#define MAX_SMALL_MESSAGE 10000          /* protocol/framing.py: Sync, Describe, Close, Execute, ... */
#define MAX_CLIENT_MESSAGE (1 << 20)     /* larger client messages: Python's framer decides */
#define MAX_HELD_UPSTREAM 65536          /* a longer upstream message is relayed in pieces */
#define HIGH_WATER (1 << 20)             /* bytes queued for one side above which the other is not read */

typedef struct { unsigned char *p; size_t off, len, cap; } Buf;    /* bytes p[off..len) */

typedef struct Conn Conn;
typedef struct { Conn *conn; int side; } End;

struct Conn {
    End ends[2];
    int fd[2];
    long long sid;
    int state, reason;
    char tx;
    int unsynced, dirty;
    unsigned char *kinds;               /* ring of FIFO kinds */
    size_t khead, kcount, kcap;
    Buf in[2];                          /* read from that side, not yet passed on */
    Buf out[2];                         /* to be written to that side */
    size_t relay_left;                  /* bytes of a long upstream message still to pass through */
    uint32_t events[2];
    Conn *next;                         /* the live list */
    Conn *next_list;                    /* the returned or free-later list */
};

typedef struct {
    PyObject_HEAD
    int epfd, notify_fd, wake_fd;
    pthread_t thread;
    int running, stop;
    pthread_mutex_t mu;
    Conn *live;                         /* attached and returned (not yet collected) sessions */
    Conn *returned, *returned_tail;     /* handed back by the thread, for collect() */
    Conn *free_later;                   /* detached by Python while the thread may hold an event */
    long attached;
    unsigned long long n_attach, n_handback, n_client_messages, n_upstream_messages;
    unsigned long long n_reason[8];
} Relay;

/* ------------------------------------------------------------------ buffers */

static int buf_reserve(Buf *b, size_t extra) {
    if (b->cap - b->len >= extra)
        return 0;
    if (b->off) {                       /* compact first */
        memmove(b->p, b->p + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
        if (b->cap - b->len >= extra)
            return 0;
    }
    size_t cap = b->cap ? b->cap : 4096;
    while (cap - b->len < extra)
        cap *= 2;
    unsigned char *p = realloc(b->p, cap);
    if (!p)
        return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

static int buf_append(Buf *b, const unsigned char *data, size_t n) {
    if (!n)
        return 0;
    if (buf_reserve(b, n))
        return -1;
    memcpy(b->p + b->len, data, n);
    b->len += n;
    return 0;
}

static inline size_t buf_avail(const Buf *b) { return b->len - b->off; }

static inline void buf_consumed(Buf *b) {
    if (b->off == b->len)
        b->off = b->len = 0;
}

static inline uint32_t be32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* ------------------------------------------------------------------ the FIFO mirror */

static int fifo_push(Conn *c, unsigned char kind) {
    if (c->kcount == c->kcap) {
        size_t cap = c->kcap ? c->kcap * 2 : 64;
        unsigned char *k = malloc(cap);
        if (!k)
            return -1;
        for (size_t i = 0; i < c->kcount; i++)
            k[i] = c->kinds[(c->khead + i) % c->kcap];
        free(c->kinds);
        c->kinds = k;
        c->kcap = cap;
        c->khead = 0;
    }
    c->kinds[(c->khead + c->kcount) % c->kcap] = kind;
    c->kcount++;
    return 0;
}

/* One upstream message of type t advances the FIFO (pipeline/rules.py: FINISHED_BY, ASYNC). */
static inline void fifo_account(Conn *c, unsigned char t, const unsigned char *payload) {
    if (t == 'N' || t == 'A' || t == 'S' || !c->kcount)
        return;
    unsigned char kind = c->kinds[c->khead];
    int done = kind == K_EXT ? (t == '1' || t == '2' || t == '3' || t == 'T' || t == 'n' || t == 'C' ||
                                t == 'I' || t == 's')
                             : t == 'Z';
    if (!done)
        return;
    if (t == 'Z' && payload)
        c->tx = (char)payload[0];
    c->khead = (c->khead + 1) % c->kcap;
    c->kcount--;
}

/* ------------------------------------------------------------------ handing back */

static void handback(Relay *r, Conn *c, int reason) {
    if (c->state != ST_ATTACHED)
        return;
    epoll_ctl(r->epfd, EPOLL_CTL_DEL, c->fd[CLIENT], NULL);
    epoll_ctl(r->epfd, EPOLL_CTL_DEL, c->fd[UPSTREAM], NULL);
    c->state = ST_RETURNED;
    c->reason = reason;
    c->next_list = NULL;
    if (r->returned_tail)
        r->returned_tail->next_list = c;
    else
        r->returned = c;
    r->returned_tail = c;
    r->attached--;
    r->n_handback++;
    r->n_reason[reason]++;
    uint64_t one = 1;
    ssize_t ignored = write(r->notify_fd, &one, sizeof one);
    (void)ignored;
}

/* ------------------------------------------------------------------ client → upstream */

static inline int mentions_pgml(const unsigned char *p, size_t n) {
    for (size_t i = 0; i + 4 <= n; i++)
        if ((p[i] | 0x20) == 'p' && (p[i + 1] | 0x20) == 'g' && (p[i + 2] | 0x20) == 'm' &&
            (p[i + 3] | 0x20) == 'l')
            return 1;
    return 0;
}

/* Forward the whole client messages in in[CLIENT]; 0, or the reason to hand the session back
 * (the offending message is left unconsumed). */
static int from_client(Relay *r, Conn *c) {
    Buf *b = &c->in[CLIENT];
    size_t run = b->off;
    int reason = 0;
    while (buf_avail(b) >= 5) {
        const unsigned char *msg = b->p + b->off;
        unsigned char t = msg[0];
        uint32_t len = be32(msg + 1);
        int kind;
        switch (t) {
        case 'Q': kind = K_SIMPLE; break;
        case 'P': case 'B': kind = K_EXT; break;
        case 'D': case 'C': case 'E': kind = K_EXT; if (len > MAX_SMALL_MESSAGE) reason = R_CLIENT_MESSAGE; break;
        case 'S': kind = K_SYNC; if (len != 4) reason = R_CLIENT_MESSAGE; break;
        case 'H': kind = -1; if (len != 4) reason = R_CLIENT_MESSAGE; break;
        default: kind = -1; reason = R_CLIENT_MESSAGE;      /* X, F, COPY data, unknown: Python's */
        }
        if (len < 4 || len > MAX_CLIENT_MESSAGE)
            reason = R_CLIENT_MESSAGE;
        if (reason)
            break;
        if (buf_avail(b) < 1 + (size_t)len)
            break;                                  /* the rest is still to come */
        if (mentions_pgml(msg + 5, len - 4)) {
            reason = R_CLIENT_MESSAGE;
            break;
        }
        if (kind >= 0 && fifo_push(c, (unsigned char)kind)) {
            reason = R_CLIENT_ERROR;                 /* out of memory: Python carries on */
            break;
        }
        if (t == 'S') {
            c->unsynced = c->dirty = 0;
        } else {
            c->unsynced = 1;
            if (t == 'E')
                c->dirty = 1;
        }
        b->off += 1 + (size_t)len;
        r->n_client_messages++;
    }
    if (b->off > run && buf_append(&c->out[UPSTREAM], b->p + run, b->off - run))
        reason = R_CLIENT_ERROR;
    buf_consumed(b);
    return reason;
}

/* ------------------------------------------------------------------ upstream → client */

static inline int plain_answer(unsigned char t) {
    switch (t) {
    case '1': case '2': case '3': case 'C': case 'D': case 'I': case 'n': case 's': case 't': case 'T':
    case 'Z': case 'N': case 'S': case 'A':
        return 1;
    }
    return 0;       /* ErrorResponse, COPY, FunctionCallResponse, anything else: Python's */
}

static int from_upstream(Relay *r, Conn *c) {
    Buf *b = &c->in[UPSTREAM];
    int reason = 0;
    if (c->relay_left) {
        size_t n = buf_avail(b) < c->relay_left ? buf_avail(b) : c->relay_left;
        if (buf_append(&c->out[CLIENT], b->p + b->off, n))
            return R_UPSTREAM_ERROR;
        b->off += n;
        c->relay_left -= n;
        if (c->relay_left) {
            buf_consumed(b);
            return 0;
        }
    }
    size_t run = b->off;
    while (buf_avail(b) >= 5) {
        const unsigned char *msg = b->p + b->off;
        unsigned char t = msg[0];
        uint32_t len = be32(msg + 1);
        if (!plain_answer(t) || len < 4) {
            reason = R_UPSTREAM_MESSAGE;
            break;
        }
        if (buf_avail(b) < 1 + (size_t)len) {
            if (1 + (size_t)len > MAX_HELD_UPSTREAM && t != 'Z') {
                /* Pass on what there is, the rest as it comes (session.py does the same). */
                fifo_account(c, t, NULL);
                c->relay_left = 1 + (size_t)len - buf_avail(b);
                b->off = b->len;
                r->n_upstream_messages++;
            }
            break;
        }
        fifo_account(c, t, msg + 5);
        b->off += 1 + (size_t)len;
        r->n_upstream_messages++;
    }
    if (b->off > run && buf_append(&c->out[CLIENT], b->p + run, b->off - run))
        reason = R_UPSTREAM_ERROR;
    buf_consumed(b);
    return reason;
}

/* ------------------------------------------------------------------ sockets */

/* Write what is queued for `side`; 0, or the reason to hand back. */
static int flush_side(Conn *c, int side) {
    Buf *b = &c->out[side];
    while (buf_avail(b)) {
        ssize_t k = send(c->fd[side], b->p + b->off, buf_avail(b), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            return side == CLIENT ? R_CLIENT_ERROR : R_UPSTREAM_ERROR;
        }
        b->off += (size_t)k;
    }
    buf_consumed(b);
    return 0;
}

/* Interest per side: read it while the other side's queue is short; write it while its own is not empty. */
static void update_interest(Relay *r, Conn *c) {
    for (int side = 0; side < 2; side++) {
        uint32_t want = 0;
        if (buf_avail(&c->out[1 - side]) < HIGH_WATER)
            want |= EPOLLIN;
        if (buf_avail(&c->out[side]))
            want |= EPOLLOUT;
        if (want != c->events[side]) {
            struct epoll_event ev = {.events = want, .data.ptr = &c->ends[side]};
            epoll_ctl(r->epfd, EPOLL_CTL_MOD, c->fd[side], &ev);
            c->events[side] = want;
        }
    }
}

static void on_event(Relay *r, End *e, uint32_t events) {
    Conn *c = e->conn;
    int side = e->side;
    if (c->state != ST_ATTACHED)
        return;                         /* handed back earlier in this batch, or detached */
    int reason = 0;
    if (events & EPOLLOUT)
        reason = flush_side(c, side);
    if (!reason && (events & (EPOLLHUP | EPOLLERR)) && !(c->events[side] & EPOLLIN))
        reason = side == CLIENT ? R_CLIENT_ERROR : R_UPSTREAM_ERROR;   /* not read now: never spin on it */
    if (!reason && (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && (c->events[side] & EPOLLIN)) {
        Buf *b = &c->in[side];
        if (buf_reserve(b, READ_CHUNK)) {
            reason = side == CLIENT ? R_CLIENT_ERROR : R_UPSTREAM_ERROR;
        } else {
            ssize_t k = recv(c->fd[side], b->p + b->len, b->cap - b->len, MSG_DONTWAIT);
            if (k == 0)
                reason = side == CLIENT ? R_CLIENT_EOF : R_UPSTREAM_EOF;
            else if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                reason = side == CLIENT ? R_CLIENT_ERROR : R_UPSTREAM_ERROR;
            else if (k > 0) {
                b->len += (size_t)k;
                reason = side == CLIENT ? from_client(r, c) : from_upstream(r, c);
                int other = 1 - side;
                int wrote = flush_side(c, other);
                if (!reason)
                    reason = wrote;
            }
        }
    }
    if (reason)
        handback(r, c, reason);
    else
        update_interest(r, c);
}

static void *relay_main(void *arg) {
    Relay *r = arg;
    struct epoll_event evs[128];
    for (;;) {
        int n = epoll_wait(r->epfd, evs, 128, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        pthread_mutex_lock(&r->mu);
        if (r->stop) {
            pthread_mutex_unlock(&r->mu);
            break;
        }
        /* Sessions Python detached before this batch was taken: the batch may still name them. */
        Conn *freeing = r->free_later;
        r->free_later = NULL;
        for (int i = 0; i < n; i++) {
            End *e = evs[i].data.ptr;
            if (e == NULL) {
                uint64_t v;
                ssize_t ignored = read(r->wake_fd, &v, sizeof v);
                (void)ignored;
                continue;
            }
            on_event(r, e, evs[i].events);
        }
        while (freeing) {
            Conn *next = freeing->next_list;
            for (int s = 0; s < 2; s++) {
                free(freeing->in[s].p);
                free(freeing->out[s].p);
            }
            free(freeing->kinds);
            free(freeing);
            freeing = next;
        }
        pthread_mutex_unlock(&r->mu);
    }
    return NULL;
}

/* ------------------------------------------------------------------ the Python type */

static void conn_free(Conn *c) {
    for (int s = 0; s < 2; s++) {
        free(c->in[s].p);
        free(c->out[s].p);
    }
    free(c->kinds);
    free(c);
}

static void unlink_live(Relay *r, Conn *c) {
    for (Conn **p = &r->live; *p; p = &(*p)->next)
        if (*p == c) {
            *p = c->next;
            return;
        }
}

static PyObject *bytes_of(const Buf *b) {
    return PyBytes_FromStringAndSize((const char *)b->p + b->off, (Py_ssize_t)buf_avail(b));
}

/* The state Python resumes from: (sid, reason, kinds, tx, unsynced, dirty, relay_left,
 * client_in, upstream_in, to_client, to_upstream). */
static PyObject *conn_state(Conn *c) {
    PyObject *kinds = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)c->kcount);
    if (!kinds)
        return NULL;
    char *k = PyBytes_AS_STRING(kinds);
    for (size_t i = 0; i < c->kcount; i++)
        k[i] = (char)c->kinds[(c->khead + i) % c->kcap];
    return Py_BuildValue("(LiNCiinNNNN)", c->sid, c->reason, kinds, c->tx, c->unsynced, c->dirty,
                         (Py_ssize_t)c->relay_left, bytes_of(&c->in[CLIENT]), bytes_of(&c->in[UPSTREAM]),
                         bytes_of(&c->out[CLIENT]), bytes_of(&c->out[UPSTREAM]));
}

static int Relay_init(Relay *self, PyObject *args, PyObject *kw) {
    static char *names[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "", names))
        return -1;
    self->epfd = epoll_create1(EPOLL_CLOEXEC);
    self->notify_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    self->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (self->epfd < 0 || self->notify_fd < 0 || self->wake_fd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(self->epfd, EPOLL_CTL_ADD, self->wake_fd, &ev) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    pthread_mutex_init(&self->mu, NULL);
    if (pthread_create(&self->thread, NULL, relay_main, self)) {
        PyErr_SetString(PyExc_OSError, "cannot start the relay thread");
        return -1;
    }
    self->running = 1;
    return 0;
}

static PyObject *Relay_attach(Relay *self, PyObject *args) {
    long long sid;
    int cfd, ufd, unsynced, dirty;
    int tx;
    if (!PyArg_ParseTuple(args, "LiiCpp", &sid, &cfd, &ufd, &tx, &unsynced, &dirty))
        return NULL;
    if (!self->running) {
        PyErr_SetString(PyExc_RuntimeError, "the relay is closed");
        return NULL;
    }
    Conn *c = calloc(1, sizeof *c);
    if (!c)
        return PyErr_NoMemory();
    c->sid = sid;
    c->fd[CLIENT] = cfd;
    c->fd[UPSTREAM] = ufd;
    c->tx = (char)tx;
    c->unsynced = unsynced;
    c->dirty = dirty;
    c->state = ST_ATTACHED;
    for (int s = 0; s < 2; s++) {
        c->ends[s].conn = c;
        c->ends[s].side = s;
        c->events[s] = EPOLLIN;
    }
    pthread_mutex_lock(&self->mu);
    struct epoll_event ev0 = {.events = EPOLLIN, .data.ptr = &c->ends[CLIENT]};
    struct epoll_event ev1 = {.events = EPOLLIN, .data.ptr = &c->ends[UPSTREAM]};
    int failed = epoll_ctl(self->epfd, EPOLL_CTL_ADD, cfd, &ev0) < 0;
    if (!failed && epoll_ctl(self->epfd, EPOLL_CTL_ADD, ufd, &ev1) < 0) {
        failed = 1;
        epoll_ctl(self->epfd, EPOLL_CTL_DEL, cfd, NULL);
    }
    if (!failed) {
        c->next = self->live;
        self->live = c;
        self->attached++;
        self->n_attach++;
    }
    pthread_mutex_unlock(&self->mu);
    if (failed) {
        free(c);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

static PyObject *Relay_collect(Relay *self, PyObject *unused) {
    uint64_t v;
    ssize_t ignored = read(self->notify_fd, &v, sizeof v);
    (void)ignored;
    PyObject *out = PyList_New(0);
    if (!out)
        return NULL;
    pthread_mutex_lock(&self->mu);
    Conn *c = self->returned;
    self->returned = self->returned_tail = NULL;
    while (c) {
        Conn *next = c->next_list;
        unlink_live(self, c);
        PyObject *state = conn_state(c);
        conn_free(c);
        if (!state || PyList_Append(out, state)) {
            Py_XDECREF(state);
            /* keep going: every returned session must reach Python or be dropped, never leak */
            PyErr_Clear();
        } else {
            Py_DECREF(state);
        }
        c = next;
    }
    pthread_mutex_unlock(&self->mu);
    return out;
}

static PyObject *Relay_detach(Relay *self, PyObject *args) {
    long long sid;
    if (!PyArg_ParseTuple(args, "L", &sid))
        return NULL;
    PyObject *state = NULL;
    pthread_mutex_lock(&self->mu);
    Conn *c = self->live;
    while (c && c->sid != sid)
        c = c->next;
    if (c) {
        unlink_live(self, c);
        if (c->state == ST_ATTACHED) {
            epoll_ctl(self->epfd, EPOLL_CTL_DEL, c->fd[CLIENT], NULL);
            epoll_ctl(self->epfd, EPOLL_CTL_DEL, c->fd[UPSTREAM], NULL);
            c->state = ST_DETACHED;
            c->reason = R_DETACHED;
            self->attached--;
            self->n_reason[R_DETACHED]++;
            state = conn_state(c);
            c->next_list = self->free_later;
            self->free_later = c;
        } else {                        /* returned, not yet collected: take it off that list */
            Conn **p = &self->returned;
            Conn *prev = NULL;
            while (*p && *p != c) {
                prev = *p;
                p = &(*p)->next_list;
            }
            if (*p) {
                *p = c->next_list;
                if (self->returned_tail == c)
                    self->returned_tail = prev;
            }
            state = conn_state(c);
            conn_free(c);
        }
    }
    pthread_mutex_unlock(&self->mu);
    if (state == NULL && !PyErr_Occurred())
        Py_RETURN_NONE;
    return state;
}

static void relay_stop(Relay *self) {
    if (!self->running)
        return;
    pthread_mutex_lock(&self->mu);
    self->stop = 1;
    pthread_mutex_unlock(&self->mu);
    uint64_t one = 1;
    ssize_t ignored = write(self->wake_fd, &one, sizeof one);
    (void)ignored;
    Py_BEGIN_ALLOW_THREADS
    pthread_join(self->thread, NULL);
    Py_END_ALLOW_THREADS
    self->running = 0;
    Conn *c = self->free_later;
    while (c) {
        Conn *next = c->next_list;
        conn_free(c);
        c = next;
    }
    self->free_later = NULL;
}

static PyObject *Relay_close(Relay *self, PyObject *unused) {
    relay_stop(self);
    Py_RETURN_NONE;
}

static PyObject *Relay_stats(Relay *self, PyObject *unused) {
    pthread_mutex_lock(&self->mu);
    PyObject *d = Py_BuildValue(
        "{s:l,s:K,s:K,s:K,s:K,s:{s:K,s:K,s:K,s:K,s:K,s:K,s:K}}", "attached", self->attached, "attaches",
        self->n_attach, "handbacks", self->n_handback, "client_messages", self->n_client_messages,
        "upstream_messages", self->n_upstream_messages, "reasons", "client_message",
        self->n_reason[R_CLIENT_MESSAGE], "upstream_message", self->n_reason[R_UPSTREAM_MESSAGE], "client_eof",
        self->n_reason[R_CLIENT_EOF], "upstream_eof", self->n_reason[R_UPSTREAM_EOF], "client_error",
        self->n_reason[R_CLIENT_ERROR], "upstream_error", self->n_reason[R_UPSTREAM_ERROR], "detached",
        self->n_reason[R_DETACHED]);
    pthread_mutex_unlock(&self->mu);
    return d;
}

static PyObject *Relay_get_notify_fd(Relay *self, void *closure) { return PyLong_FromLong(self->notify_fd); }

static void Relay_dealloc(Relay *self) {
    relay_stop(self);
    Conn *c = self->live;
    while (c) {                         /* nothing should be left; do not leak if it is */
        Conn *next = c->next;
        conn_free(c);
        c = next;
    }
    if (self->epfd > 0)
        close(self->epfd);
    if (self->notify_fd > 0)
        close(self->notify_fd);
    if (self->wake_fd > 0)
        close(self->wake_fd);
    pthread_mutex_destroy(&self->mu);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Relay_methods[] = {
    {"attach", (PyCFunction)Relay_attach, METH_VARARGS,
     "attach(sid, client_fd, upstream_fd, tx_status, unsynced, batch_dirty): relay this session's sockets."},
    {"detach", (PyCFunction)Relay_detach, METH_VARARGS, "detach(sid) -> state or None: take a session back."},
    {"collect", (PyCFunction)Relay_collect, METH_NOARGS, "collect() -> [state]: the sessions handed back."},
    {"stats", (PyCFunction)Relay_stats, METH_NOARGS, "stats() -> dict of counters."},
    {"close", (PyCFunction)Relay_close, METH_NOARGS, "close(): stop the thread (detach every session first)."},
    {NULL}};

static PyGetSetDef Relay_getset[] = {
    {"notify_fd", (getter)Relay_get_notify_fd, NULL, "readable when sessions were handed back", NULL},
    {NULL}};

static PyTypeObject RelayType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pgml_server.proxy._relay.Relay",
    .tp_basicsize = sizeof(Relay),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One relay thread and the sessions attached to it.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Relay_init,
    .tp_dealloc = (destructor)Relay_dealloc,
    .tp_methods = Relay_methods,
    .tp_getset = Relay_getset,
};

static struct PyModuleDef relay_module = {PyModuleDef_HEAD_INIT, "_relay",
                                          "The compiled relay core of pgml-server (see relay.py).", -1, NULL};

PyMODINIT_FUNC PyInit__relay(void) {
    if (PyType_Ready(&RelayType) < 0)
        return NULL;
    PyObject *mod = PyModule_Create(&relay_module);
    if (!mod)
        return NULL;
    Py_INCREF(&RelayType);
    if (PyModule_AddObject(mod, "Relay", (PyObject *)&RelayType) < 0) {
        Py_DECREF(&RelayType);
        Py_DECREF(mod);
        return NULL;
    }
    PyModule_AddIntConstant(mod, "CLIENT_MESSAGE", R_CLIENT_MESSAGE);
    PyModule_AddIntConstant(mod, "UPSTREAM_MESSAGE", R_UPSTREAM_MESSAGE);
    PyModule_AddIntConstant(mod, "CLIENT_EOF", R_CLIENT_EOF);
    PyModule_AddIntConstant(mod, "UPSTREAM_EOF", R_UPSTREAM_EOF);
    PyModule_AddIntConstant(mod, "CLIENT_ERROR", R_CLIENT_ERROR);
    PyModule_AddIntConstant(mod, "UPSTREAM_ERROR", R_UPSTREAM_ERROR);
    PyModule_AddIntConstant(mod, "DETACHED", R_DETACHED);
    return mod;
}
