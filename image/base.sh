#!/usr/bin/env bash
# The cached base stage of image/build, run by mmdebstrap's customize hook on the fresh tree
# ($1): prune what the appliance never uses. Its output depends only on the package list and
# this file (the cache key); image/build makes the initrd afterwards (dracut.conf).
set -euo pipefail
root=$1
kver=$(basename "$(ls -d "$root"/lib/modules/*)")

# Kernel modules: keep storage, USB (keyboard, stick), wired network, TPM, crypto, dm and the
# file systems the box mounts (erofs root, ext4 state, vfat ESP and sticks, efivarfs: without
# it no trial boot is seen or marked good, and every update falls back); drop the rest.
mods=$root/lib/modules/$kver/kernel
rm -rf "$mods"/sound "$mods"/drivers/{gpu,media,infiniband,staging,bluetooth,iio,isdn,nfc,thunderbolt,hwmon,mtd,misc/genwqe} \
  "$mods"/drivers/net/{wireless,can,wwan,usb,ieee802154,hamradio,arcnet,fddi,plip,slip,ppp,team} \
  "$mods"/drivers/net/ethernet/{mellanox,chelsio,qlogic,netronome,huawei,cavium,pensando,sfc,amazon,emulex,brocade} \
  "$mods"/drivers/input/{touchscreen,joystick,tablet,misc} \
  "$mods"/net/{bluetooth,wireless,mac80211,netfilter,sched,sunrpc,ceph,9p,can,nfc,rxrpc,tipc,sctp,openvswitch,batman-adv,l2tp,bridge,mpls,dsa,rds,smc,x25,lapb,appletalk,atm,ieee802154,mac802154,6lowpan,ipv4/netfilter,ipv6/netfilter,bridge/netfilter,ax25,netrom,rose,phonet,caif,qrtr,vmw_vsock,wimax,lapb}
for fs in "$mods"/fs/*; do
  case ${fs##*/} in erofs|ext4|jbd2|mbcache.ko|fat|exfat|nls|squashfs|autofs|crypto|efivarfs) ;; *) rm -rf "$fs" ;; esac
done
chroot "$root" depmod -a "$kver"

# Documentation, manuals, locales, most time zones; keep the copyright notices (licences).
find "$root"/usr/share/doc -mindepth 1 ! -name copyright ! -type d -delete
find "$root"/usr/share/doc -mindepth 1 -type d -empty -delete
rm -rf "$root"/usr/share/{man,info,locale,lintian,linda,bash-completion,zsh} \
  "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/var/log/*.log
find "$root"/usr/share/zoneinfo -mindepth 1 -maxdepth 1 ! -name Etc ! -name Europe ! -name UTC -exec rm -rf {} +
find "$root"/usr/share/zoneinfo/Europe -mindepth 1 ! -name London -delete
