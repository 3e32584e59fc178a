"""The Pulumi program's components: the server side (`service`) and the control plane
(`control_plane`), configured by `settings` from the stack's `fluidity:*` keys."""
