/*
 * OHIF Viewer configuration for pacs-lite.
 *
 * pacs-lite serves this file at /app-config.js next to the prebuilt viewer
 * (scripts/fetch-ohif.sh), with {{...}} placeholders filled in from its own
 * settings. The DICOMweb roots are same-origin, so no CORS setup is needed.
 */
window.config = {
  name: 'pacs-lite',
  routerBasename: '{{ROUTER_BASENAME}}',
  extensions: [],
  modes: [],
  customizationService: {},
  showStudyList: true,
  maxNumberOfWebWorkers: 3,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: true,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  maxNumRequests: { interaction: 100, thumbnail: 5, prefetch: 25 },
  showErrorDetails: 'always',
  defaultDataSourceName: 'pacs-lite',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'pacs-lite',
      configuration: {
        friendlyName: '{{NAME}}',
        name: 'pacs-lite',
        wadoUriRoot: window.location.origin + '/wado',
        qidoRoot: window.location.origin + '{{DICOMWEB_PATH}}',
        wadoRoot: window.location.origin + '{{DICOMWEB_PATH}}',
        qidoSupportsIncludeField: true,
        supportsFuzzyMatching: true,
        supportsWildcard: true,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        staticWado: false,
        singlepart: 'bulkdata,video',
        bulkDataURI: { enabled: true, relativeResolution: 'studies' },
        omitQuotationForMultipartRequest: true,
      },
    },
  ],
};
