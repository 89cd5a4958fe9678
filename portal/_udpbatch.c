/* portal._udpbatch: many UDP datagrams per system call (recvmmsg, sendmmsg).
 *
 * An optional speed-up of portal/edges/udp_batch.py, which has the same two functions in
 * pure Python (one recvfrom()/sendto() per datagram) and uses those when this module is not
 * built. Python's socket module has no recvmmsg/sendmmsg; under load the stub reads many
 * queries and upstream answers per wakeup, and one system call for all of them is what
 * dnsmasq's C gets for free in the cost per datagram (bench/).
 *
 *   recv(fd, limit, addresses) -> list
 *       Up to `limit` datagrams that are waiting on `fd`, without blocking: a list of
 *       (data, address) when `addresses` is true, else of data. An empty list when nothing
 *       waits. OSError when the first read fails (ECONNREFUSED after an ICMP error on a
 *       connected socket, for instance); an error after some datagrams is left for the next
 *       call, as recvmmsg(2) does. The address is what socket.recvfrom() gives: (host, port)
 *       for IPv4, (host, port, flowinfo, scope_id) for IPv6.
 *   send(fd, items) -> int
 *       Send every (data, address) of the list `items` without blocking; returns how many were
 *       sent. A datagram the kernel refuses (a full buffer) is skipped, as a failed sendto():
 *       the client asks again.
 *   serve(fd, limit, table_ref) -> list
 *       The DNS thread's wait when nothing else needs it: one recvmmsg() that blocks (the
 *       interpreter lock released) until a datagram arrives and then takes up to `limit` that
 *       wait. Each one from a 127.* address whose bytes after the ID are a key of the dict
 *       `table_ref[0]` (a list of one item, read once per wakeup: the stub swaps its table by
 *       replacing that item; no Python runs on this path) is answered at once from the value, a (reply after the ID, valid_until or None) tuple, when
 *       valid_until is None or later than the time of day: the query's ID, then the reply. That
 *       is exactly AnswerCache.get (portal/core/answer.py), which builds the table; the answers
 *       go out in one sendmmsg(). The other datagrams are returned as recv() returns them, and
 *       serve() returns only when there is one: a query the table cannot answer, the reactor's
 *       wake-up datagram. Waiting and answering this way costs no Python at all per answer,
 *       which is what separated the stub's latency from dnsmasq's at low rates (bench/).
 *
 * recv() and send() make no decision: bytes in, bytes out. All three run in the DNS thread, and
 * recv() and serve() share one static area for the datagrams they read (its pages become
 * resident as datagrams are written there: sharing keeps what a load leaves resident to one
 * set). recv() and send() hold the interpreter lock throughout (they never block); serve()
 * waits without it, and while it does, a recv() from another thread is refused (RuntimeError)
 * rather than given the area, as is a second serve().
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define MAX_BATCH 64
#define MAX_DATAGRAM 65535

/* Pages are made resident only where datagrams are written: mostly the first of each slot. */
static unsigned char *buffers;
static int serving; /* serve() is waiting: the buffers are its own */
static struct mmsghdr msgs[MAX_BATCH];
static struct iovec iovs[MAX_BATCH];
static struct sockaddr_storage names[MAX_BATCH];

static PyObject *address_of(const struct sockaddr_storage *ss, socklen_t len)
{
    char host[NI_MAXHOST];
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
        if (!inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host)))
            return PyErr_SetFromErrno(PyExc_OSError);
        return Py_BuildValue("(si)", host, ntohs(in->sin_port));
    }
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
        /* as the socket module: getnameinfo() names a link-local scope ("fe80::1%eth0") */
        int error = getnameinfo((const struct sockaddr *)ss, len, host, sizeof(host), NULL, 0,
                                NI_NUMERICHOST);
        if (error) {
            PyErr_Format(PyExc_OSError, "getnameinfo: %s", gai_strerror(error));
            return NULL;
        }
        return Py_BuildValue("(siII)", host, ntohs(in6->sin6_port),
                             (unsigned int)ntohl(in6->sin6_flowinfo),
                             (unsigned int)in6->sin6_scope_id);
    }
    Py_RETURN_NONE; /* not a datagram socket of ours: the caller finds no address */
}

/* The headers of a recvmmsg() of up to `limit` datagrams into the shared area, one slot each,
 * with the senders' addresses in `addrs` unless it is NULL. */
static void prepare_reads(struct mmsghdr *m, struct iovec *iov, struct sockaddr_storage *addrs,
                          int limit)
{
    for (int i = 0; i < limit; i++) {
        iov[i].iov_base = buffers + (size_t)i * MAX_DATAGRAM;
        iov[i].iov_len = MAX_DATAGRAM;
        memset(&m[i].msg_hdr, 0, sizeof(m[i].msg_hdr));
        m[i].msg_hdr.msg_iov = &iov[i];
        m[i].msg_hdr.msg_iovlen = 1;
        if (addrs) {
            m[i].msg_hdr.msg_name = &addrs[i];
            m[i].msg_hdr.msg_namelen = sizeof(addrs[i]);
        }
    }
}

static PyObject *udpbatch_recv(PyObject *self, PyObject *args)
{
    int fd, limit, with_addresses;
    if (!PyArg_ParseTuple(args, "iip", &fd, &limit, &with_addresses))
        return NULL;
    if (limit < 1)
        return PyList_New(0);
    if (limit > MAX_BATCH)
        limit = MAX_BATCH;
    if (serving) {
        PyErr_SetString(PyExc_RuntimeError, "serve() is waiting with the buffers in another thread");
        return NULL;
    }
    prepare_reads(msgs, iovs, with_addresses ? names : NULL, limit);
    int got;
    do {
        got = recvmmsg(fd, msgs, (unsigned int)limit, MSG_DONTWAIT, NULL);
    } while (got < 0 && errno == EINTR);
    if (got < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return PyList_New(0);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *out = PyList_New(got);
    if (!out)
        return NULL;
    for (int i = 0; i < got; i++) {
        PyObject *data =
            PyBytes_FromStringAndSize((const char *)iovs[i].iov_base, msgs[i].msg_len);
        if (!data)
            goto fail;
        if (!with_addresses) {
            PyList_SET_ITEM(out, i, data);
            continue;
        }
        PyObject *addr = address_of(&names[i], msgs[i].msg_hdr.msg_namelen);
        if (!addr) {
            Py_DECREF(data);
            goto fail;
        }
        PyObject *pair = PyTuple_Pack(2, data, addr);
        Py_DECREF(data);
        Py_DECREF(addr);
        if (!pair)
            goto fail;
        PyList_SET_ITEM(out, i, pair);
    }
    return out;
fail:
    Py_DECREF(out);
    return NULL;
}

/* The sockaddr for a Python address tuple; 0 when it cannot be read (the item is skipped). */
static socklen_t sockaddr_of(PyObject *addr, struct sockaddr_storage *ss)
{
    const char *host;
    int port;
    unsigned int flowinfo = 0, scope_id = 0;
    if (!PyTuple_Check(addr))
        return 0;
    memset(ss, 0, sizeof(*ss));
    if (PyTuple_GET_SIZE(addr) == 2) {
        if (!PyArg_ParseTuple(addr, "si", &host, &port))
            return 0;
        struct sockaddr_in *in = (struct sockaddr_in *)ss;
        in->sin_family = AF_INET;
        in->sin_port = htons((uint16_t)port);
        if (inet_pton(AF_INET, host, &in->sin_addr) != 1)
            return 0;
        return sizeof(*in);
    }
    if (!PyArg_ParseTuple(addr, "si|II", &host, &port, &flowinfo, &scope_id))
        return 0;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons((uint16_t)port);
    in6->sin6_flowinfo = htonl(flowinfo);
    char plain[INET6_ADDRSTRLEN];
    const char *percent = strchr(host, '%');
    if (percent) { /* "fe80::1%eth0", as recv() gives it: the scope is the interface's */
        size_t n = (size_t)(percent - host);
        if (n >= sizeof(plain))
            return 0;
        memcpy(plain, host, n);
        plain[n] = '\0';
        host = plain;
        if (!scope_id)
            scope_id = if_nametoindex(percent + 1);
    }
    in6->sin6_scope_id = scope_id;
    if (inet_pton(AF_INET6, host, &in6->sin6_addr) != 1)
        return 0;
    return sizeof(*in6);
}

static PyObject *udpbatch_send(PyObject *self, PyObject *args)
{
    int fd;
    PyObject *items;
    if (!PyArg_ParseTuple(args, "iO!", &fd, &PyList_Type, &items))
        return NULL;
    Py_ssize_t total = PyList_GET_SIZE(items), done = 0, sent = 0;
    while (done < total) {
        int n = 0;
        /* one batch of what can be read; an unreadable item is skipped */
        while (done + n < total && n < MAX_BATCH) {
            PyObject *item = PyList_GET_ITEM(items, done + n);
            char *data;
            Py_ssize_t size;
            socklen_t namelen = 0;
            if (PyTuple_Check(item) && PyTuple_GET_SIZE(item) == 2 &&
                PyBytes_Check(PyTuple_GET_ITEM(item, 0))) {
                PyBytes_AsStringAndSize(PyTuple_GET_ITEM(item, 0), &data, &size);
                namelen = sockaddr_of(PyTuple_GET_ITEM(item, 1), &names[n]);
            }
            if (!namelen) {
                PyErr_Clear();
                if (n == 0) {
                    done++; /* skipped */
                    continue;
                }
                break; /* send what is gathered; this one is skipped next round */
            }
            iovs[n].iov_base = data;
            iovs[n].iov_len = (size_t)size;
            memset(&msgs[n].msg_hdr, 0, sizeof(msgs[n].msg_hdr));
            msgs[n].msg_hdr.msg_iov = &iovs[n];
            msgs[n].msg_hdr.msg_iovlen = 1;
            msgs[n].msg_hdr.msg_name = &names[n];
            msgs[n].msg_hdr.msg_namelen = namelen;
            n++;
        }
        if (n == 0)
            continue;
        int out;
        do {
            out = sendmmsg(fd, msgs, (unsigned int)n, MSG_DONTWAIT);
        } while (out < 0 && errno == EINTR);
        if (out <= 0) {
            done += 1; /* the first one failed (a full buffer, a vanished peer): skip it */
            continue;
        }
        sent += out;
        done += out;
    }
    return PyLong_FromSsize_t(sent);
}

/* serve()'s message headers; the datagrams go to the shared area (buffers) */
static struct mmsghdr serve_msgs[MAX_BATCH];
static struct iovec serve_iovs[MAX_BATCH];
static struct sockaddr_storage serve_names[MAX_BATCH];
static struct mmsghdr answer_msgs[MAX_BATCH];
static struct iovec answer_iovs[2 * MAX_BATCH];
static PyObject *answer_refs[MAX_BATCH];
/* The table's reply (a new reference) for datagram i, or NULL when it has none. */
static PyObject *cached_reply(PyObject *table, int i, double now)
{
    const struct sockaddr_in *in = (const struct sockaddr_in *)&serve_names[i];
    unsigned int len = serve_msgs[i].msg_len;
    if (in->sin_family != AF_INET || (ntohl(in->sin_addr.s_addr) >> 24) != 127 || len < 12 ||
        (serve_msgs[i].msg_hdr.msg_flags & MSG_TRUNC))
        return NULL;
    PyObject *key = PyBytes_FromStringAndSize((const char *)serve_iovs[i].iov_base + 2, len - 2);
    if (!key)
        return NULL;
    PyObject *hit = PyDict_GetItemWithError(table, key); /* borrowed */
    Py_DECREF(key);
    if (!hit || !PyTuple_Check(hit) || PyTuple_GET_SIZE(hit) != 2 ||
        !PyBytes_Check(PyTuple_GET_ITEM(hit, 0)))
        return NULL;
    PyObject *valid_until = PyTuple_GET_ITEM(hit, 1);
    if (valid_until != Py_None) {
        double until = PyFloat_AsDouble(valid_until);
        if (until == -1.0 && PyErr_Occurred())
            return NULL;
        if (!(now < until))
            return NULL;
    }
    PyObject *reply = PyTuple_GET_ITEM(hit, 0);
    Py_INCREF(reply);
    return reply;
}

/* Send the answers gathered (the interpreter lock released), then let go of their replies. */
static void send_answers(int fd, int n)
{
    int done = 0;
    Py_BEGIN_ALLOW_THREADS
    while (done < n) {
        int out = sendmmsg(fd, answer_msgs + done, (unsigned int)(n - done), MSG_DONTWAIT);
        if (out < 0 && errno == EINTR)
            continue;
        done += out > 0 ? out : 1; /* refused (a full buffer): skipped, the client asks again */
    }
    Py_END_ALLOW_THREADS
    for (int j = 0; j < n; j++)
        Py_DECREF(answer_refs[j]);
}

static PyObject *udpbatch_serve(PyObject *self, PyObject *args)
{
    int fd, limit;
    PyObject *table_ref;
    if (!PyArg_ParseTuple(args, "iiO!", &fd, &limit, &PyList_Type, &table_ref))
        return NULL;
    if (limit < 1)
        limit = 1;
    if (limit > MAX_BATCH)
        limit = MAX_BATCH;
    if (serving) {
        PyErr_SetString(PyExc_RuntimeError, "serve() is already waiting in another thread");
        return NULL;
    }
    serving = 1;
    PyObject *out = NULL;
    while (!out) {
        prepare_reads(serve_msgs, serve_iovs, serve_names, limit);
        int got, error;
        Py_BEGIN_ALLOW_THREADS
        got = recvmmsg(fd, serve_msgs, (unsigned int)limit, MSG_WAITFORONE, NULL);
        error = errno;
        Py_END_ALLOW_THREADS
        if (got < 0) {
            if (error == EINTR && !PyErr_CheckSignals())
                continue;
            if (error != EINTR) {
                errno = error;
                PyErr_SetFromErrno(PyExc_OSError);
            }
            break;
        }
        PyObject *table = PyList_GET_SIZE(table_ref) ? PyList_GET_ITEM(table_ref, 0) : NULL;
        if (table && PyDict_Check(table))
            Py_INCREF(table); /* the stub may replace it while the answers go out */
        else
            table = NULL; /* nothing to answer from: every datagram goes back */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        double now = (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
        int answered = 0;
        for (int i = 0; i < got; i++) {
            PyObject *reply = table ? cached_reply(table, i, now) : NULL;
            if (reply) {
                struct iovec *iov = &answer_iovs[2 * answered];
                iov[0].iov_base = serve_iovs[i].iov_base; /* the query's ID */
                iov[0].iov_len = 2;
                iov[1].iov_base = PyBytes_AS_STRING(reply);
                iov[1].iov_len = (size_t)PyBytes_GET_SIZE(reply);
                memset(&answer_msgs[answered].msg_hdr, 0, sizeof(answer_msgs[answered].msg_hdr));
                answer_msgs[answered].msg_hdr.msg_iov = iov;
                answer_msgs[answered].msg_hdr.msg_iovlen = 2;
                answer_msgs[answered].msg_hdr.msg_name = &serve_names[i];
                answer_msgs[answered].msg_hdr.msg_namelen = serve_msgs[i].msg_hdr.msg_namelen;
                answer_refs[answered++] = reply;
                continue;
            }
            if (PyErr_Occurred()) { /* a key that cannot be hashed or compared: no answer */
                PyErr_Clear();
            }
            if (!out && !(out = PyList_New(0)))
                break;
            PyObject *data =
                PyBytes_FromStringAndSize((const char *)serve_iovs[i].iov_base, serve_msgs[i].msg_len);
            PyObject *addr = data ? address_of(&serve_names[i], serve_msgs[i].msg_hdr.msg_namelen) : NULL;
            PyObject *pair = addr ? PyTuple_Pack(2, data, addr) : NULL;
            Py_XDECREF(data);
            Py_XDECREF(addr);
            if (!pair || PyList_Append(out, pair) < 0) {
                Py_XDECREF(pair);
                Py_CLEAR(out);
                break;
            }
            Py_DECREF(pair);
        }
        Py_XDECREF(table);
        if (answered)
            send_answers(fd, answered);
        if (PyErr_Occurred())
            break;
    }
    serving = 0;
    if (PyErr_Occurred()) {
        Py_XDECREF(out);
        return NULL;
    }
    return out;
}

static PyMethodDef methods[] = {
    {"recv", udpbatch_recv, METH_VARARGS, "recv(fd, limit, addresses) -> list"},
    {"send", udpbatch_send, METH_VARARGS, "send(fd, items) -> int"},
    {"serve", udpbatch_serve, METH_VARARGS, "serve(fd, limit, table_ref) -> list"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "portal._udpbatch",
    "Many UDP datagrams per system call (recvmmsg, sendmmsg): see portal/edges/udp_batch.py.",
    -1, methods,
};

PyMODINIT_FUNC PyInit__udpbatch(void)
{
    /* address space only: the kernel makes a page resident when a datagram is written to it */
    buffers = PyMem_RawMalloc((size_t)MAX_BATCH * MAX_DATAGRAM);
    if (!buffers)
        return PyErr_NoMemory();
    PyObject *m = PyModule_Create(&module);
    if (m) {
        PyModule_AddIntConstant(m, "MAX_BATCH", MAX_BATCH);
    }
    return m;
}
