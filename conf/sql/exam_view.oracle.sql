-- The exam view (影像云视图) as a table, oracle flavour: the seed's columns and types
-- (温岭市影像云接口文档 2019-01, see docs/view.md). Names are UNQUOTED on purpose: hospitals
-- create the view without quotes and dicomproxy refers to every name unquoted in lower case.
-- Oracle folds unquoted names to UPPER case (V_IMAGE_CLOUD, EXAMINEID): never quote them.
-- '' is NULL in Oracle; dicomproxy never compares with ''. VARCHAR2 in CHAR semantics for Chinese.
--
-- In production this is normally a VIEW over the RIS tables with exactly these column names;
-- the indexes below must then exist on the underlying columns (ExamineID unique; PatientID,
-- AccessionNumber, PerformTime, PatientName, RowTimestamp). Privacy: 0 normal, 1 secret,
-- 2 confidential, 3 top secret (NULL is treated as 0). Generated from dicomproxy/view/model.py.

CREATE TABLE v_image_cloud (
    ExamineID VARCHAR2(64 CHAR) NOT NULL,
    MedNo VARCHAR2(20 CHAR),
    IdNumber VARCHAR2(20 CHAR),
    HealthCardNO VARCHAR2(64 CHAR),
    CardNo VARCHAR2(36 CHAR),
    MedRecNo VARCHAR2(20 CHAR),
    PatientID VARCHAR2(64 CHAR),
    PIDAssigningAuthority VARCHAR2(64 CHAR),
    BarCodeNo VARCHAR2(64 CHAR),
    OutPatientNo VARCHAR2(20 CHAR),
    InPatientNo VARCHAR2(20 CHAR),
    AreaNo VARCHAR2(64 CHAR),
    BedNo VARCHAR2(50 CHAR),
    HisExamineId VARCHAR2(20 CHAR),
    OrderSeries VARCHAR2(36 CHAR),
    VisitIDAssigningAuthority VARCHAR2(64 CHAR),
    PatientName VARCHAR2(64 CHAR),
    PatientSex VARCHAR2(4 CHAR),
    PatientAge VARCHAR2(16 CHAR),
    PatientAgeUnit VARCHAR2(16 CHAR),
    PatientBirthday VARCHAR2(10 CHAR),
    Address VARCHAR2(150 CHAR),
    Professional VARCHAR2(30 CHAR),
    Company VARCHAR2(150 CHAR),
    PhoneCode VARCHAR2(20 CHAR),
    PatientType VARCHAR2(30 CHAR),
    AllergicHistory VARCHAR2(2000 CHAR),
    PatientDesc VARCHAR2(2000 CHAR),
    ClinicDiagnosis VARCHAR2(2000 CHAR),
    MedicalRecord VARCHAR2(2000 CHAR),
    AccessionNumber VARCHAR2(16 CHAR),
    ExamineType VARCHAR2(16 CHAR),
    ExamineItem VARCHAR2(50 CHAR),
    ExamineItemID VARCHAR2(50 CHAR),
    ExamineBodyPart VARCHAR2(255 CHAR),
    ExamineBodyPartACR VARCHAR2(255 CHAR),
    ExamineRoom VARCHAR2(64 CHAR),
    ExamineEquipment VARCHAR2(64 CHAR),
    ExamineEquipmentID VARCHAR2(64 CHAR),
    Register VARCHAR2(20 CHAR),
    RegisterID VARCHAR2(20 CHAR),
    RegTime DATE,
    ReqOffice VARCHAR2(40 CHAR),
    ReqOfficeID VARCHAR2(20 CHAR),
    ReqDoctor VARCHAR2(20 CHAR),
    ReqDoctorID VARCHAR2(20 CHAR),
    ReqTime DATE,
    PerformTime DATE,
    PerformTechnician VARCHAR2(20 CHAR),
    PerformTechnicianID VARCHAR2(20 CHAR),
    ExamineTechnology VARCHAR2(255 CHAR),
    ReportTime DATE,
    ReportPhysician VARCHAR2(20 CHAR),
    ReportPhysicianID VARCHAR2(20 CHAR),
    AuditTime DATE,
    AuditDoctor VARCHAR2(20 CHAR),
    AuditDoctorID VARCHAR2(20 CHAR),
    ReviseTime DATE,
    ReviseDoctor VARCHAR2(20 CHAR),
    ReviseDoctorID VARCHAR2(20 CHAR),
    ResultDate DATE,
    DoctorPhone VARCHAR2(20 CHAR),
    ImageSight VARCHAR2(2000 CHAR),
    ImageDiagnosis VARCHAR2(2000 CHAR),
    IsMasculine VARCHAR2(15 CHAR),
    CriticalValue VARCHAR2(255 CHAR),
    InfectionName VARCHAR2(255 CHAR),
    Annotation VARCHAR2(2000 CHAR),
    State VARCHAR2(10 CHAR),
    PregnancyFlag INTEGER,
    Privacy INTEGER,
    HospitalID VARCHAR2(64 CHAR),
    HospitalName VARCHAR2(64 CHAR),
    StudyInstanceUID VARCHAR2(512 CHAR),
    OrderFilePath VARCHAR2(256 CHAR),
    ReportFilePath VARCHAR2(256 CHAR),
    RowTimestamp TIMESTAMP,
    Sysid VARCHAR2(10 CHAR)
);

CREATE UNIQUE INDEX ux_v_image_cloud_examineid ON v_image_cloud (ExamineID);
CREATE INDEX ix_v_image_cloud_patientid ON v_image_cloud (PatientID);
CREATE INDEX ix_v_image_cloud_accession ON v_image_cloud (AccessionNumber);
CREATE INDEX ix_v_image_cloud_performtime ON v_image_cloud (PerformTime);
CREATE INDEX ix_v_image_cloud_patientname ON v_image_cloud (PatientName);
CREATE INDEX ix_v_image_cloud_rowtimestamp ON v_image_cloud (RowTimestamp);
