FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY core ./core
COPY service ./service
COPY workers ./workers
COPY classifiers ./classifiers
COPY client ./client
RUN pip install ./client .
ENV TLSERVE_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 8000
CMD ["tlserve", "api", "--host", "0.0.0.0", "--port", "8000"]
