#!/usr/bin/env bash
# A script with the mistakes shellcheck exists to catch: it must fail validation.
dir=$1
rm -rf $dir/*
cd $dir
