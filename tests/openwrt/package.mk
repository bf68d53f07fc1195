# Stand-in for OpenWrt's include/package.mk: BuildPackage gives targets that
# run the package's Build/Prepare, Build/Compile and install recipes into
# DESTDIR (install), or print its metadata (info).  The install macros are
# OpenWrt's own.
PKG_BUILD_DIR := $(BUILD_DIR)/$(PKG_NAME)-$(PKG_VERSION)
INSTALL_DIR := install -d -m0755
INSTALL_BIN := install -m0755
INSTALL_DATA := install -m0644
INSTALL_CONF := install -m0600
CP := cp -fpR

define BuildPackage
$(eval $(Package/$(1)))
.PHONY: install info
install:
	$$(Build/Prepare)
	$$(Build/Compile)
	$$(call Package/$(1)/install,$$(DESTDIR))
info:
	@echo "PKGARCH=$(PKGARCH)"
	@echo "DEPENDS=$(DEPENDS)"
	@echo "CONFFILES=$(strip $(Package/$(1)/conffiles))"
endef
