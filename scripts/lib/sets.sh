# Sourced by the scripts that train many variants of one profile.

# `add_sets ARRAY "key=value key=value ..."`: append `--set key=value` to the array named
# ARRAY, quoting values that are not numbers or booleans as TOML strings.
add_sets() {
  local -n into=$1
  local kv key value
  for kv in $2; do
    key=${kv%%=*} value=${kv#*=}
    [[ $value =~ ^[0-9.e+-]+$|^true$|^false$ ]] || value="\"$value\""
    into+=(--set "$key=$value")
  done
}
