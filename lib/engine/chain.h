/*
 * chain.h - backing-chain helpers shared by the open path (backing-file.c, image-create.c) and the
 * public chain API (chain.c): resolving a backing name and probing a file's
 * format.  Internal to lib/engine.
 */
#ifndef QED_CHAIN_H
#define QED_CHAIN_H

#include <stdbool.h>
#include <stddef.h>

struct stat;

/**
 * qed_chain_resolve - the path under which the backing file named @name in
 * the image at @image_path is opened, written to @out: @name itself when it
 * is absolute or @image_path has no directory part, otherwise @name appended
 * to @image_path's directory (everything up to its last '/'), as QEMU's
 * path_combine does.  Returns 0 or -ENAMETOOLONG.
 */
int qed_chain_resolve(const char *image_path, const char *name, char *out, size_t outlen);

/**
 * qed_chain_probe - open @path as every backing file is opened (never
 * blocking, only a regular file or a block device, confined to @confine_dir
 * when not NULL; @owner names the image it backs, or NULL) and read its
 * first bytes: *@is_qed is true when they are the QED magic.  *@st (may be
 * NULL) receives the file's fstat.  Returns 0 or a negative errno with @err set.
 */
int qed_chain_probe(const char *owner, const char *path, const char *confine_dir, bool *is_qed,
                    struct stat *st, char *err, size_t errlen);

#endif /* QED_CHAIN_H */
