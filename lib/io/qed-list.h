/*
 * qed-list.h - the two intrusive lists libqed keeps everywhere: a singly
 * linked FIFO (head, tail, a `next` field of the caller's choosing) and a
 * doubly linked list (head, `prev`/`next` fields).  Macros, because the
 * items are of several types (requests, I/Os, deferred calls, L2 tables).
 */
#ifndef QED_LIST_H
#define QED_LIST_H

#include <stddef.h>

/* Append @item to the FIFO @head .. @tail, linked through @item->NEXT. */
#define QED_FIFO_APPEND(head, tail, item, NEXT)                                                    \
    do {                                                                                           \
        (item)->NEXT = NULL;                                                                       \
        if (tail)                                                                                  \
            (tail)->NEXT = (item);                                                                 \
        else                                                                                       \
            (head) = (item);                                                                       \
        (tail) = (item);                                                                           \
    } while (0)

/* Unlink @item from the doubly linked list starting at @head (PREV/NEXT fields). */
#define QED_DLIST_UNLINK(head, item, PREV, NEXT)                                                   \
    do {                                                                                           \
        if ((item)->PREV)                                                                          \
            (item)->PREV->NEXT = (item)->NEXT;                                                     \
        else                                                                                       \
            (head) = (item)->NEXT;                                                                 \
        if ((item)->NEXT)                                                                          \
            (item)->NEXT->PREV = (item)->PREV;                                                     \
        (item)->PREV = (item)->NEXT = NULL;                                                        \
    } while (0)

#endif /* QED_LIST_H */
