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
 *
 * No decision is made here: bytes in, bytes out. Both run with the interpreter lock held (they
 * never block), so the one static buffer area is the DNS thread's alone.
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

#define MAX_BATCH 64
#define MAX_DATAGRAM 65535

/* Pages are made resident only where datagrams are written: mostly the first of each slot. */
static unsigned char *buffers;
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

static PyObject *udpbatch_recv(PyObject *self, PyObject *args)
{
    int fd, limit, with_addresses;
    if (!PyArg_ParseTuple(args, "iip", &fd, &limit, &with_addresses))
        return NULL;
    if (limit < 1)
        return PyList_New(0);
    if (limit > MAX_BATCH)
        limit = MAX_BATCH;
    for (int i = 0; i < limit; i++) {
        iovs[i].iov_base = buffers + (size_t)i * MAX_DATAGRAM;
        iovs[i].iov_len = MAX_DATAGRAM;
        memset(&msgs[i].msg_hdr, 0, sizeof(msgs[i].msg_hdr));
        msgs[i].msg_hdr.msg_iov = &iovs[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        if (with_addresses) {
            msgs[i].msg_hdr.msg_name = &names[i];
            msgs[i].msg_hdr.msg_namelen = sizeof(names[i]);
        }
    }
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

static PyMethodDef methods[] = {
    {"recv", udpbatch_recv, METH_VARARGS, "recv(fd, limit, addresses) -> list"},
    {"send", udpbatch_send, METH_VARARGS, "send(fd, items) -> int"},
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
