"""Pages for browsers: the sign-in that lets a browser reach its sessions."""
