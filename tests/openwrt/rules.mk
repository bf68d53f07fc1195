# Stand-in for OpenWrt's rules.mk: only what a package Makefile's install
# recipe needs.  make -C openwrt TOPDIR=<this dir> BUILD_DIR=... DESTDIR=... install
INCLUDE_DIR := $(TOPDIR)
