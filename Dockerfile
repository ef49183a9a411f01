FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
# CPU torch for the funnel tier first: PyPI's default torch wheel brings gigabytes of CUDA libraries.
RUN pip install --no-cache-dir "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu \
    && pip install --no-cache-dir -e .
COPY . .
# Without DEBUG, so the hashed names and the manifest that production storage reads are written.
RUN SECRET_KEY=collectstatic-only python manage.py collectstatic --no-input --verbosity 0
RUN useradd --create-home app && chown -R app /app
USER app
EXPOSE 8000
CMD ["gunicorn", "config.wsgi", "--bind", "0.0.0.0:8000", "--workers", "3"]
