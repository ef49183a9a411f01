# The environment of the running setup, shared by scripts/run and scripts/manage (sourced after _env.sh).
export DEBUG=${DEBUG:-1}
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/safeguard}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
PORT=${PORT:-8000}
export SITE_URL=${SITE_URL:-http://127.0.0.1:$PORT}
