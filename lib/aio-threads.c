/* placeholder: written by the aio helper */
