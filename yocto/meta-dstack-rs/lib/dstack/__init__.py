# Helpers shared by the layer's recipes (bitbake imports them through
# `addpylib` in conf/layer.conf) and by yocto/scripts (plain Python 3), so a
# recipe and the checks that judge it read the repository the same way.
